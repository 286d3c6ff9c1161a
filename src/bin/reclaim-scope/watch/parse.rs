//! The pure part, first half: the watched events, `gfp_flags` as tracefs
//! prints them, and a trace line into an event.

/// The events watched, `system/name`. Missing ones (older kernels) are
/// reported, not fatal, except that without any reclaim event nothing
/// could be proved.
pub const EVENTS: &[&str] = &[
    "vmscan/mm_vmscan_direct_reclaim_begin",
    "vmscan/mm_vmscan_memcg_reclaim_begin",
    "kmem/mm_page_alloc",
    "writeback/balance_dirty_pages",
    "vmscan/mm_vmscan_throttled",
];

pub const PF_MEMALLOC_NOIO: u32 = 0x0008_0000;
pub const PF_LOCAL_THROTTLE: u32 = 0x0010_0000;

// ---------------------------------------------------------------------------
// gfp flags as tracefs prints them
// ---------------------------------------------------------------------------

/// Whether an allocation may recurse into file-system (`__GFP_FS`) or
/// block-I/O (`__GFP_IO`) reclaim; `unknown` when a name was not
/// recognized (counted apart, never taken as safe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gfp {
    pub fs: bool,
    pub io: bool,
    pub unknown: bool,
}

impl Gfp {
    pub fn fs_or_io(self) -> bool {
        self.fs || self.io
    }
}

/// FS/IO content of every name `show_gfp_flags()` prints
/// (include/trace/events/mmflags.h); composites first, as the kernel
/// emits them.
const GFP_NAMES: &[(&str, bool, bool)] = &[
    ("GFP_TRANSHUGE", true, true),
    ("GFP_TRANSHUGE_LIGHT", true, true),
    ("GFP_HIGHUSER_MOVABLE", true, true),
    ("GFP_HIGHUSER", true, true),
    ("GFP_USER", true, true),
    ("GFP_TEMPORARY", true, true),
    ("GFP_KERNEL_ACCOUNT", true, true),
    ("GFP_KERNEL", true, true),
    ("GFP_NOFS", false, true),
    ("GFP_ATOMIC", false, false),
    ("GFP_NOIO", false, false),
    ("GFP_NOWAIT", false, false),
    ("GFP_DMA", false, false),
    ("GFP_DMA32", false, false),
    ("GFP_IOFS", true, true),
    ("__GFP_IO", false, true),
    ("__GFP_FS", true, false),
    ("__GFP_RECLAIM", false, false),
];

/// `__GFP_*` bits that say nothing about FS/IO, across 4.x–6.x.
const GFP_OTHER_BITS: &[&str] = &[
    "DMA",
    "HIGHMEM",
    "DMA32",
    "MOVABLE",
    "RECLAIMABLE",
    "HIGH",
    "ATOMIC",
    "ZERO",
    "DIRECT_RECLAIM",
    "KSWAPD_RECLAIM",
    "WRITE",
    "NOWARN",
    "RETRY_MAYFAIL",
    "REPEAT",
    "NOFAIL",
    "NORETRY",
    "MEMALLOC",
    "COMP",
    "NOMEMALLOC",
    "HARDWALL",
    "THISNODE",
    "ACCOUNT",
    "ZEROTAGS",
    "SKIP_ZERO",
    "SKIP_KASAN",
    "SKIP_KASAN_POISON",
    "SKIP_KASAN_UNPOISON",
    "NOLOCKDEP",
    "NO_OBJ_EXT",
    "COLD",
    "NOTRACK",
    "OTHER_NODE",
    "NOACCOUNT",
    "WAIT",
    "NO_KSWAPD",
    "KMEMCG",
];

/// Classifies a `gfp_flags=` value (`GFP_KERNEL|__GFP_COMP`, `0x400c00`).
pub fn classify_gfp(s: &str) -> Gfp {
    let s = s.trim();
    let mut c = Gfp::default();
    if s == "none" || s == "0" || s == "0x0" {
        return c;
    }
    for tok in s.split('|').map(str::trim) {
        if let Some((_, fs, io)) = GFP_NAMES.iter().find(|(n, _, _)| *n == tok) {
            c.fs |= fs;
            c.io |= io;
        } else if tok
            .strip_prefix("__GFP_")
            .is_some_and(|b| GFP_OTHER_BITS.contains(&b))
        {
        } else if let Some(v) = tok
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            // Unnamed bits; __GFP_IO and __GFP_FS are 0x40 and 0x80.
            c.io |= v & 0x40 != 0;
            c.fs |= v & 0x80 != 0;
        } else {
            c.unknown = true;
        }
    }
    c
}

// ---------------------------------------------------------------------------
// trace lines
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Direct or memcg reclaim entered, with its gfp mask.
    Reclaim(Gfp),
    PageAlloc(Gfp),
    /// `balance_dirty_pages`: milliseconds this call sleeps (≤ 0: none).
    Throttle {
        pause_ms: i64,
    },
    /// `mm_vmscan_throttled`: reclaim made the task wait.
    VmscanThrottled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Event {
        tid: i32,
        comm: String,
        kind: Kind,
    },
    /// `CPU:1 [LOST 42 EVENTS]` from trace_pipe.
    Lost(u64),
}

/// The value of `name=` among space-separated fields (exact name:
/// `pause=` never matches `dirtied_pause=`).
pub fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
    fields
        .split_whitespace()
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
}

/// Parses one line of `trace_pipe`; `None` for anything else (comments,
/// other events, a malformed line).
pub fn parse_line(line: &str) -> Option<Line> {
    let t = line.trim();
    if let Some(rest) = t.split_once("[LOST ").map(|(_, r)| r) {
        return rest.split_whitespace().next()?.parse().ok().map(Line::Lost);
    }
    if t.starts_with('#') || t.is_empty() {
        return None;
    }
    // "<comm>-<tid> [cpu] <flags> <ts>: <event>: <fields>"; comm may hold
    // spaces, dashes and brackets: the "[cpu]" column is the first "[digits]"
    // whose left neighbour ends in "-<digits>".
    let b = line.as_bytes();
    let mut search = 0;
    let (tid, comm, after) = loop {
        let open = search + line[search..].find('[')?;
        let close = open + line[open..].find(']')?;
        search = open + 1;
        if close == open + 1 || !b[open + 1..close].iter().all(u8::is_ascii_digit) {
            continue;
        }
        let left = line[..open].trim_end();
        let Some(dash) = left.rfind('-') else {
            continue;
        };
        let Ok(tid) = left[dash + 1..].parse::<i32>() else {
            continue;
        };
        break (tid, left[..dash].trim().to_owned(), &line[close + 1..]);
    };
    let rest = &after[after.find(": ")? + 2..];
    let (event, fields) = rest
        .split_once(": ")
        .unwrap_or((rest.trim_end_matches(':'), ""));
    let gfp = || classify_gfp(field(fields, "gfp_flags").unwrap_or("?"));
    let kind = match event.trim() {
        "mm_vmscan_direct_reclaim_begin" | "mm_vmscan_memcg_reclaim_begin" => Kind::Reclaim(gfp()),
        "mm_page_alloc" => Kind::PageAlloc(gfp()),
        "balance_dirty_pages" => Kind::Throttle {
            pause_ms: field(fields, "pause")?.parse().ok()?,
        },
        "mm_vmscan_throttled" => Kind::VmscanThrottled,
        _ => return None,
    };
    Some(Line::Event { tid, comm, kind })
}
