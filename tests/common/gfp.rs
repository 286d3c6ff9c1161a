//! gfp flags as tracefs prints them, classified by `__GFP_FS`/`__GFP_IO`.

/// Whether an allocation may recurse into file-system (`__GFP_FS`) and
/// block-I/O (`__GFP_IO`) reclaim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GfpClass {
    pub fs: bool,
    pub io: bool,
}

impl GfpClass {
    /// Neither FS nor IO: what every allocation of an I/O flusher must be.
    pub fn is_noio(self) -> bool {
        !self.fs && !self.io
    }
}

const GFP_IO_BIT: u64 = 0x40;
const GFP_FS_BIT: u64 = 0x80;

/// FS/IO content of every name `show_gfp_flags()` can print
/// (include/trace/events/mmflags.h, include/linux/gfp_types.h; older names
/// from 4.x kept so a different guest kernel does not break the parser).
/// `__print_flags` emits the first matching mask of its table and removes
/// its bits, so the names in one string are disjoint and their union is the
/// mask: composites first (`GFP_HIGHUSER_MOVABLE|__GFP_COMP`), then single
/// bits, then leftover bits in hex.
const GFP_NAMES: &[(&str, bool, bool)] = &[
    // (name, __GFP_FS, __GFP_IO)
    ("GFP_TRANSHUGE", true, true), // GFP_TRANSHUGE_LIGHT | __GFP_DIRECT_RECLAIM
    ("GFP_TRANSHUGE_LIGHT", true, true), // (GFP_HIGHUSER_MOVABLE|...) & ~__GFP_RECLAIM
    ("GFP_HIGHUSER_MOVABLE", true, true), // GFP_HIGHUSER | __GFP_MOVABLE
    ("GFP_HIGHUSER", true, true),  // GFP_USER | __GFP_HIGHMEM
    ("GFP_USER", true, true),      // __GFP_RECLAIM|__GFP_IO|__GFP_FS|__GFP_HARDWALL
    ("GFP_TEMPORARY", true, true), // (≤4.14) GFP_KERNEL | __GFP_RECLAIMABLE
    ("GFP_KERNEL_ACCOUNT", true, true), // GFP_KERNEL | __GFP_ACCOUNT
    ("GFP_KERNEL", true, true),    // __GFP_RECLAIM | __GFP_IO | __GFP_FS
    ("GFP_NOFS", false, true),     // __GFP_RECLAIM | __GFP_IO
    ("GFP_ATOMIC", false, false),  // __GFP_HIGH | (__GFP_ATOMIC) | __GFP_KSWAPD_RECLAIM
    ("GFP_NOIO", false, false),    // __GFP_RECLAIM
    ("GFP_NOWAIT", false, false),  // __GFP_KSWAPD_RECLAIM (| __GFP_NOWARN)
    ("GFP_DMA", false, false),
    ("GFP_DMA32", false, false),
    ("GFP_IOFS", true, true), // (≤3.x) __GFP_IO | __GFP_FS
    ("__GFP_IO", false, true),
    ("__GFP_FS", true, false),
    ("__GFP_RECLAIM", false, false),
];

/// Single `__GFP_*` bits that say nothing about FS/IO, across 4.x–6.x.
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

/// Classify a tracefs `gfp_flags=` value. Unknown names are an error, so a
/// kernel that prints something new fails the proof instead of passing it.
pub fn classify_gfp(s: &str) -> Result<GfpClass, String> {
    let s = s.trim();
    let mut c = GfpClass::default();
    if s == "none" || s == "0" || s == "0x0" {
        return Ok(c);
    }
    for tok in s.split('|').map(str::trim) {
        if let Some((_, fs, io)) = GFP_NAMES.iter().find(|(n, _, _)| *n == tok) {
            c.fs |= fs;
            c.io |= io;
        } else if tok
            .strip_prefix("__GFP_")
            .is_some_and(|b| GFP_OTHER_BITS.contains(&b))
        {
            // Neither FS nor IO.
        } else if let Some(hex) = tok.strip_prefix("0x") {
            // Bits without a name; __GFP_IO/__GFP_FS are 0x40/0x80 in every
            // kernel since 2.6 (and always have names, so this is defensive).
            let v = u64::from_str_radix(hex, 16)
                .map_err(|_| format!("bad gfp token {tok:?} in {s:?}"))?;
            c.io |= v & GFP_IO_BIT != 0;
            c.fs |= v & GFP_FS_BIT != 0;
        } else {
            return Err(format!("unknown gfp name {tok:?} in {s:?}"));
        }
    }
    Ok(c)
}
