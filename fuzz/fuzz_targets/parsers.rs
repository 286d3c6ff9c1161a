//! The option and request parsers of examples/src/nbd/proto.rs on raw
//! bytes, with the invariants the server relies on checked.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reclaim_scope_examples::nbd::proto::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_info_request(data) {
        assert!(r.name.len() + 6 + 2 * r.infos.len() == data.len());
    }
    if let Ok(m) = parse_meta_request(data) {
        let used: usize = 8 + m.name.len() + m.queries.iter().map(|q| 4 + q.len()).sum::<usize>();
        assert_eq!(used, data.len());
        assert!(m.queries.iter().all(|q| q.len() <= MAX_STRING));
        for q in &m.queries {
            let _ = query_selects_base_allocation(q, true);
        }
    }
    if let Some(h) = data.get(..REQUEST_LEN) {
        let req = Request::parse(h.try_into().unwrap());
        let size = u64::from_be_bytes(
            data.get(REQUEST_LEN..REQUEST_LEN + 8)
                .map_or([0; 8], |b| b.try_into().unwrap()),
        );
        for structured in [false, true] {
            for base_allocation in [false, true] {
                let neg = Negotiated {
                    structured,
                    base_allocation,
                };
                for ro in [false, true] {
                    if precheck(&req, neg, size, ro).is_none() {
                        // What the server then serves is inside the export.
                        assert!(req.cmd == CMD_FLUSH || req.in_range(size));
                        assert!(req.cmd != CMD_READ || req.len <= MAX_PAYLOAD);
                        assert!(!ro || !matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES));
                    }
                }
            }
        }
    }
    let msg = String::from_utf8_lossy(data);
    let c = error_chunk(1, EIO, &msg);
    let len = u32::from_be_bytes(c[16..20].try_into().unwrap()) as usize;
    assert_eq!(c.len(), 20 + len);
    assert!(len - 6 <= MAX_STRING);
});
