//! [`RwFlags`]: the typed `RWF_*` flags of `preadv2(2)` / `pwritev2(2)`.

#[cfg(doc)]
use super::NoFsFile;
use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

/// Per-call `RWF_*` flags of `preadv2(2)` / `pwritev2(2)`, typed.
///
/// Combine with `|`; every flag names the kernel that added it, and a flag
/// the running kernel rejects fails the call with an error naming the flag
/// and that version (see [`NoFsFile::preadv2_nofs`]).
///
/// No `RWF_NOFS` was ever merged: these flags change no allocation context;
/// [`NoFsFile`] gets that from its scope.
///
/// # Examples
///
/// ```
/// use reclaim_scope::RwFlags;
///
/// let f = RwFlags::DSYNC | RwFlags::NOWAIT;
/// assert!(f.contains(RwFlags::DSYNC));
/// assert!(!f.contains(RwFlags::SYNC));
/// assert_eq!(f.bits(), 0x2 | 0x8);
/// assert_eq!(f.to_string(), "RWF_DSYNC|RWF_NOWAIT");
/// assert!(RwFlags::empty().is_empty());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[doc(alias = "rwf_t")]
pub struct RwFlags(u32);

/// `(bit, name, first Linux version)` of every flag known to this crate.
const RWF_TABLE: &[(u32, &str, &str)] = &[
    (0x01, "RWF_HIPRI", "4.6"),
    (0x02, "RWF_DSYNC", "4.7"),
    (0x04, "RWF_SYNC", "4.7"),
    (0x08, "RWF_NOWAIT", "4.14"),
    (0x10, "RWF_APPEND", "4.16"),
    (0x20, "RWF_NOAPPEND", "6.9"),
    (0x40, "RWF_ATOMIC", "6.11"),
    (0x80, "RWF_DONTCACHE", "6.14"),
];

impl RwFlags {
    /// `RWF_HIPRI` (Linux 4.6): poll for completion (only meaningful with
    /// `O_DIRECT` on a polled queue).
    pub const HIPRI: RwFlags = RwFlags(0x01);
    /// `RWF_DSYNC` (Linux 4.7): per-call `O_DSYNC`.
    pub const DSYNC: RwFlags = RwFlags(0x02);
    /// `RWF_SYNC` (Linux 4.7): per-call `O_SYNC`.
    pub const SYNC: RwFlags = RwFlags(0x04);
    /// `RWF_NOWAIT` (Linux 4.14): do not block; a buffered read that would
    /// wait for the disk fails with [`io::ErrorKind::WouldBlock`](std::io::ErrorKind::WouldBlock) (`EAGAIN`;
    /// recent kernels start readahead first, and serve holes).
    pub const NOWAIT: RwFlags = RwFlags(0x08);
    /// `RWF_APPEND` (Linux 4.16): per-call `O_APPEND` (the offset is
    /// ignored).
    pub const APPEND: RwFlags = RwFlags(0x10);
    /// `RWF_NOAPPEND` (Linux 6.9): ignore `O_APPEND` for this call.
    pub const NOAPPEND: RwFlags = RwFlags(0x20);
    /// `RWF_ATOMIC` (Linux 6.11): an untorn write; needs `O_DIRECT`, a file
    /// system and device with atomic-write support, and a power-of-two
    /// length aligned to its offset within the advertised unit (`statx`
    /// `STATX_WRITE_ATOMIC`).
    pub const ATOMIC: RwFlags = RwFlags(0x40);
    /// `RWF_DONTCACHE` (Linux 6.14): buffered I/O that drops its page cache
    /// once done (the pages are still allocated, with the scope's gfp).
    pub const DONTCACHE: RwFlags = RwFlags(0x80);

    const KNOWN: u32 = 0xff;

    /// No flag: `preadv2`/`pwritev2` behave like `preadv`/`pwritev`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reclaim_scope::RwFlags::empty().bits(), 0);
    /// ```
    #[inline]
    pub const fn empty() -> RwFlags {
        RwFlags(0)
    }

    /// The raw `rwf_t` value.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reclaim_scope::RwFlags::NOWAIT.bits(), 0x8);
    /// ```
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The flags of `bits`, or `None` if a bit is unknown to this crate.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// assert_eq!(RwFlags::from_bits(0x6), Some(RwFlags::DSYNC | RwFlags::SYNC));
    /// assert_eq!(RwFlags::from_bits(0x100), None);
    /// ```
    #[inline]
    pub const fn from_bits(bits: u32) -> Option<RwFlags> {
        if bits & !Self::KNOWN == 0 {
            Some(RwFlags(bits))
        } else {
            None
        }
    }

    /// The flags of `bits`, keeping bits unknown to this crate (for flags of
    /// kernels newer than it; the kernel rejects what it does not know).
    ///
    /// # Examples
    ///
    /// ```
    /// let f = reclaim_scope::RwFlags::from_bits_retain(0x100);
    /// assert_eq!(f.bits(), 0x100);
    /// ```
    #[inline]
    pub const fn from_bits_retain(bits: u32) -> RwFlags {
        RwFlags(bits)
    }

    /// Whether every flag of `other` is set in `self`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// assert!((RwFlags::SYNC | RwFlags::HIPRI).contains(RwFlags::SYNC));
    /// ```
    #[inline]
    pub const fn contains(self, other: RwFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!reclaim_scope::RwFlags::SYNC.is_empty());
    /// ```
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Both sets of flags (the `const` form of `|`).
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// const F: RwFlags = RwFlags::DSYNC.union(RwFlags::HIPRI);
    /// assert_eq!(F, RwFlags::DSYNC | RwFlags::HIPRI);
    /// ```
    #[inline]
    pub const fn union(self, other: RwFlags) -> RwFlags {
        RwFlags(self.0 | other.0)
    }

    /// The first Linux version that accepts every flag of `self`, e.g.
    /// `"6.11"`; `None` if a bit is unknown to this crate.
    ///
    /// # Examples
    ///
    /// ```
    /// use reclaim_scope::RwFlags;
    /// assert_eq!((RwFlags::DSYNC | RwFlags::ATOMIC).min_kernel(), Some("6.11"));
    /// assert_eq!(RwFlags::empty().min_kernel(), Some("4.6"));
    /// ```
    pub fn min_kernel(self) -> Option<&'static str> {
        if self.0 & !Self::KNOWN != 0 {
            return None;
        }
        // The table is in version order.
        let newest = RWF_TABLE.iter().rev().find(|(b, _, _)| self.0 & b != 0);
        Some(newest.map_or("4.6", |(_, _, v)| v))
    }

    /// "RWF_DSYNC (Linux 4.7), RWF_ATOMIC (Linux 6.11)" for error messages.
    pub(super) fn describe_with_versions(self) -> String {
        let mut parts: Vec<String> = RWF_TABLE
            .iter()
            .filter(|(b, _, _)| self.0 & b != 0)
            .map(|(_, n, v)| format!("{n} (Linux {v})"))
            .collect();
        let unknown = self.0 & !Self::KNOWN;
        if unknown != 0 {
            parts.push(format!("unknown bits {unknown:#x}"));
        }
        parts.join(", ")
    }
}

impl BitOr for RwFlags {
    type Output = RwFlags;
    #[inline]
    fn bitor(self, rhs: RwFlags) -> RwFlags {
        RwFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for RwFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: RwFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for RwFlags {
    type Output = RwFlags;
    #[inline]
    fn bitand(self, rhs: RwFlags) -> RwFlags {
        RwFlags(self.0 & rhs.0)
    }
}

impl fmt::Display for RwFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let r = if first { Ok(()) } else { f.write_str("|") };
            first = false;
            r
        };
        for (b, n, _) in RWF_TABLE {
            if self.0 & b != 0 {
                sep(f)?;
                f.write_str(n)?;
            }
        }
        let unknown = self.0 & !Self::KNOWN;
        if unknown != 0 {
            sep(f)?;
            write!(f, "{unknown:#x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RwFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RwFlags({self})")
    }
}
