use super::*;

/// One thread with one event, for tests of the output's shape.
pub(crate) fn sample_tally() -> Tally {
    let mut t = Tally::default();
    t.feed("nbd-conn-231 [000] ..... 88.9: mm_page_alloc: page=0 pfn=0x1 order=0 migratetype=1 gfp_flags=GFP_NOIO");
    t
}

const RECORDED: &str = "\
# tracer: nop
  nbd-conn-231     [000] d..1.    88.914100: mm_page_alloc: page=000000001 pfn=0x1234 order=0 migratetype=1 gfp_flags=GFP_NOIO|__GFP_COMP
  nbd-conn-231     [000] .....    88.914200: mm_vmscan_memcg_reclaim_begin: order=0 gfp_flags=GFP_NOIO
  nbd-conn-231     [000] .....    88.914321: balance_dirty_pages: bdi 1:1: limit=4096 setpoint=3072 dirty=4500 bdi_setpoint=120 bdi_dirty=40 dirty_ratelimit=102 task_ratelimit=0 dirtied=32 dirtied_pause=32 paused=0 pause=0 period=0 think=0 cgroup_ino=1
  nbd server-232   [001] .....    89.000001: mm_page_alloc: page=000000002 pfn=0x1235 order=0 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE|__GFP_COMP
  nbd server-232   [001] .....    89.000002: mm_vmscan_direct_reclaim_begin: order=0 gfp_flags=GFP_KERNEL|__GFP_ACCOUNT
  nbd server-232   [001] .....    89.100000: balance_dirty_pages: bdi 1:1: limit=4096 setpoint=3072 dirty=4600 wb_setpoint=120 wb_dirty=40 dirty_ratelimit=25 task_ratelimit=12 dirtied=8 dirtied_pause=64 paused=0 pause=200 period=200 think=0 cgroup_ino=1
  nbd server-232   [001] .....    89.300000: mm_vmscan_throttled: nid=0 usec_timeout=100000 usect_delayed=100000 reason=VMSCAN_THROTTLE_WRITEBACK
CPU:1 [LOST 3 EVENTS]
  nbd-conn-231     [000] .....    90.0: sched_switch: prev_comm=x
";

#[test]
fn recorded_lines_are_counted_per_thread() {
    let mut t = Tally::default();
    for l in RECORDED.lines() {
        t.feed(l);
    }
    assert_eq!(t.lost, 3);
    let a = &t.threads[&231];
    assert_eq!(a.comm, "nbd-conn");
    assert_eq!(
        a.counts,
        Counts {
            reclaims: 1,
            allocs: 1,
            throttle_events: 1,
            ..Counts::default()
        }
    );
    assert!(!a.counts.is_unsafe());
    let b = &t.threads[&232];
    assert_eq!(b.comm, "nbd server");
    assert_eq!(
        b.counts,
        Counts {
            reclaims: 1,
            fs_io_reclaims: 1,
            allocs: 1,
            fs_io_allocs: 1,
            throttle_events: 1,
            pauses: 1,
            paused_ms: 200,
            max_pause_ms: 200,
            vmscan_throttled: 1,
            unknown_gfp: 0,
        }
    );
    assert!(t.unsafe_seen());
    let tot = t.total();
    assert_eq!((tot.reclaims, tot.fs_io_reclaims, tot.pauses), (2, 1, 1));
    let notes = Notes {
        secs: 2.0,
        ..Notes::default()
    };
    let text = table(&t, &notes);
    assert!(text.contains("UNSAFE"), "{text}");
    assert!(
        text.contains("lost events: 3 (the counts are a lower bound)"),
        "{text}"
    );
    let j: serde_json::Value = serde_json::from_str(&json(&t, &notes)).unwrap();
    assert_eq!(j["unsafe"], true);
    assert_eq!(j["lost_events"], 3);
    assert_eq!(j["total"]["throttle_pauses"], 1);
    assert_eq!(j["total"]["paused_ms"], 200);
    assert_eq!(j["threads"][1]["name"], "nbd server");
    assert_eq!(j["threads"][1]["counts"]["fs_io_reclaims"], 1);
}

#[test]
fn a_noio_thread_is_safe_and_its_bits_are_shown() {
    let mut t = Tally::default();
    t.feed(RECORDED.lines().nth(2).unwrap());
    t.threads.get_mut(&231).unwrap().flags = Some(PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE);
    assert!(!t.unsafe_seen());
    let text = table(&t, &Notes::default());
    assert!(text.contains("NOIO|LOCAL_THROTTLE"), "{text}");
    assert!(text.contains("safe: no FS/IO-capable reclaim"), "{text}");
    let j: serde_json::Value = serde_json::from_str(&json(&t, &Notes::default())).unwrap();
    assert_eq!(j["unsafe"], false);
    assert_eq!(j["threads"][0]["local_throttle"], true);
}

#[test]
fn lost_events_without_anything_unsafe_are_not_proved_safe() {
    let mut t = Tally::default();
    t.feed(RECORDED.lines().nth(2).unwrap());
    t.feed("CPU:1 [LOST 17 EVENTS]");
    assert!(!t.unsafe_seen());
    assert_eq!(t.lost, 17);
    let text = table(&t, &Notes::default());
    assert!(
        text.contains("lost events: 17 (the counts are a lower bound)"),
        "{text}"
    );
    assert!(
        text.contains("NOT PROVED: nothing unsafe seen, but 17 events were lost (exit status 5)"),
        "{text}"
    );
    assert!(!text.contains("safe: no FS/IO"), "{text}");
    let j: serde_json::Value = serde_json::from_str(&json(&t, &Notes::default())).unwrap();
    assert_eq!(
        (j["unsafe"].clone(), j["lost_events"].clone()),
        (false.into(), 17.into())
    );
}

#[test]
fn fields_by_exact_name_and_bad_lines() {
    assert_eq!(field("dirtied_pause=32 pause=-4", "pause"), Some("-4"));
    assert_eq!(field("dirtied_pause=32", "pause"), None);
    // A throttle line without pause= is not counted as a pause.
    assert_eq!(
        parse_line("x-1 [000] .... 1.0: balance_dirty_pages: bdi 1:0: dirtied_pause=3"),
        None
    );
    assert_eq!(parse_line("garbage"), None);
    assert_eq!(parse_line(""), None);
    assert_eq!(parse_line("CPU:0 [LOST 12 EVENTS]"), Some(Line::Lost(12)));
    // Unknown gfp names are never safe for a reclaim.
    let mut t = Tally::default();
    t.feed("d-5 [000] .... 1.0: mm_vmscan_direct_reclaim_begin: order=0 gfp_flags=GFP_NEWTHING");
    assert_eq!(t.threads[&5].counts.fs_io_reclaims, 1);
    assert_eq!(t.threads[&5].counts.unknown_gfp, 1);
    assert_eq!(
        classify_gfp("0xc0"),
        Gfp {
            fs: true,
            io: true,
            unknown: false
        }
    );
    assert_eq!(
        classify_gfp("GFP_NOFS"),
        Gfp {
            fs: false,
            io: true,
            unknown: false
        }
    );
    assert_eq!(classify_gfp("GFP_NOWAIT|__GFP_NOWARN"), Gfp::default());
}

#[test]
fn zombies_count_as_exited() {
    assert!(stat_is_dead("245 (sleep) Z 1 245 245 0 -1 4227084 0"));
    assert!(stat_is_dead("245 (a) b) X 1"));
    assert!(!stat_is_dead("245 (Z) S 1 245"));
    assert!(!stat_is_dead("garbage"));
}

#[test]
fn a_task_renamed_by_exec_gets_its_new_name() {
    let mut t = Tally::default();
    t.feed("sh-248 [000] .... 1.0: mm_page_alloc: page=0 pfn=0x1 order=0 migratetype=0 gfp_flags=GFP_KERNEL");
    t.feed("dd-248 [000] .... 1.1: mm_page_alloc: page=0 pfn=0x2 order=0 migratetype=0 gfp_flags=GFP_KERNEL");
    assert_eq!(t.threads[&248].comm, "dd");
    assert_eq!(t.threads[&248].counts.allocs, 2);
}

#[test]
fn stats_lost_counters() {
    assert_eq!(
        parse_stats_lost("entries: 5\noverrun: 2\ncommit overrun: 1\ndropped events: 4\n"),
        7
    );
}
