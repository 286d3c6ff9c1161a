//! `reclaim-scope exec`: set the flag, then execvp the command in place of
//! this process, explaining a failure to execute it as a shell would.

use super::*;
use crate::probe::{diagnose, errno_text, Here};

pub(crate) fn exec(strict: bool, command: Vec<OsString>) -> u8 {
    let Some((program, args)) = command.split_first() else {
        unreachable!("clap requires COMMAND");
    };
    let shown = program.to_string_lossy();
    // Flagged already (started by a flagged parent): nothing to set, and a
    // refusal would be a false alarm.
    let flagged = ThreadFlags::current().is_ok_and(|f| f.noio());
    if !flagged {
        if let Err(e) = reclaim_scope::set_thread_io_flusher(true) {
            let why = match e.raw_os_error() {
                Some(errno) => match diagnose(errno, &Here::read()) {
                    Some(d) => format!("{}: {d}", errno_text(errno)),
                    None => e.to_string(),
                },
                None => e.to_string(),
            };
            if strict {
                say!("reclaim-scope: error: not running `{shown}` (--strict): {why}");
                return EXIT_REFUSED;
            }
            say!("reclaim-scope: warning: running `{shown}` WITHOUT the I/O-flusher flag: {why}");
        }
    }
    let err = reclaim_scope::launch::exec(program, args);
    let (code, message) = exec_failure(program, &err);
    say!("reclaim-scope: {message}");
    code
}

/// The exit status and message for a failed exec. `ENOENT` for a file that
/// exists is a missing interpreter (a `#!` line naming a program that is
/// not there, often `/bin/sh\r` from CRLF line ends) or a missing ELF
/// dynamic loader: the command was found, it cannot be executed (126).
fn exec_failure(program: &OsStr, err: &io::Error) -> (u8, String) {
    let shown = program.to_string_lossy();
    if err.kind() != io::ErrorKind::NotFound {
        return (
            EXIT_CANNOT_EXECUTE,
            format!("cannot execute: `{shown}`: {err}"),
        );
    }
    let Some(path) = find_command(program) else {
        return (
            EXIT_NOT_FOUND,
            format!("command not found: `{shown}`: {err}"),
        );
    };
    let at = if path.as_os_str() == program {
        String::new()
    } else {
        format!(" ({})", path.display())
    };
    let why = match missing_interpreter(&path, 0) {
        Some(m) => m,
        None => "the file exists, so an interpreter or library it needs is missing".to_owned(),
    };
    (
        EXIT_CANNOT_EXECUTE,
        format!("cannot execute: `{shown}`{at}: {err}: {why}"),
    )
}

/// Where `execvp` would have found `program`: the path itself if it has a
/// `/`, else the first executable regular file in `PATH` (the C library's
/// default `/bin:/usr/bin` if unset; an empty entry is the current
/// directory).
fn find_command(program: &OsStr) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            if dir.is_empty() {
                PathBuf::from(".").join(program)
            } else {
                PathBuf::from(OsStr::from_bytes(dir)).join(program)
            }
        })
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// How much of a file the kernel reads to find a `#!` line
/// (`BINPRM_BUF_SIZE`).
const BINPRM_BUF_SIZE: usize = 256;

/// Why executing the existing file `path` answered ENOENT, if its `#!` line
/// or ELF header names an interpreter that is missing (following
/// interpreters that are scripts themselves, as the kernel does, up to its
/// limit of 4 levels).
fn missing_interpreter(path: &Path, depth: u32) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let mut head = [0u8; BINPRM_BUF_SIZE];
    let n = file.read_at(&mut head, 0).ok()?;
    let head = &head[..n];
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or(line);
        let start = line.iter().position(|&b| b != b' ' && b != b'\t')?;
        let interp = &line[start..];
        let end = interp
            .iter()
            .position(|&b| b == b' ' || b == b'\t' || b == 0)
            .unwrap_or(interp.len());
        let interp = &interp[..end];
        let shown = String::from_utf8_lossy(interp);
        let shown = shown.escape_debug();
        let interp_path = Path::new(OsStr::from_bytes(interp));
        if interp.ends_with(b"\r") {
            return Some(format!(
                "its #! line names the interpreter `{shown}`, which does not exist: the script \
                 has CRLF (DOS) line ends; convert it (dos2unix, or sed -i 's/\\r$//')"
            ));
        }
        if !interp_path.exists() {
            return Some(format!(
                "its #! line names the interpreter `{shown}`, which does not exist"
            ));
        }
        if depth < 4 {
            return missing_interpreter(interp_path, depth + 1)
                .map(|inner| format!("its interpreter `{shown}` cannot run: {inner}"));
        }
        return None;
    }
    let loader = elf_interpreter(&file, head)?;
    let shown = loader.display().to_string();
    (!loader.exists()).then(|| {
        format!(
            "it is an ELF program whose dynamic loader `{shown}` does not exist (built for \
             another C library or distribution?)"
        )
    })
}

/// The `PT_INTERP` path of an ELF file (its dynamic loader), if it has one.
fn elf_interpreter(file: &std::fs::File, head: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;
    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let le = match head[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let num = |b: &[u8]| -> u64 {
        let mut v = 0u64;
        for (i, &x) in b.iter().enumerate() {
            let shift = if le { i } else { b.len() - 1 - i };
            v |= u64::from(x) << (8 * shift);
        }
        v
    };
    // (e_phoff, e_phentsize, e_phnum, p_offset, p_filesz) field ranges.
    let (phoff, phentsize, phnum, off, size) = match head[4] {
        1 => (
            num(&head[0x1c..0x20]),
            num(&head[0x2a..0x2c]),
            num(&head[0x2c..0x2e]),
            4..8,
            0x10..0x14,
        ),
        2 => (
            num(&head[0x20..0x28]),
            num(&head[0x36..0x38]),
            num(&head[0x38..0x3a]),
            8..16,
            0x20..0x28,
        ),
        _ => return None,
    };
    if phentsize < size.end as u64 || phnum == 0 || phnum > 4096 {
        return None;
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.read_exact_at(&mut table, phoff).ok()?;
    const PT_INTERP: u64 = 3;
    let ph = table
        .chunks_exact(phentsize as usize)
        .find(|ph| num(&ph[0..4]) == PT_INTERP)?;
    let len = num(&ph[size]).min(4096) as usize;
    let mut name = vec![0u8; len];
    file.read_exact_at(&mut name, num(&ph[off])).ok()?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(PathBuf::from(OsStr::from_bytes(&name[..end])))
}
