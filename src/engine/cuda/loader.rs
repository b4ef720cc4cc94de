//! Finding the CUDA libraries before cudarc touches them: cudarc panics when one is missing, so
//! crema checks first and, where a library is installed only as a Python wheel
//! (`site-packages/nvidia/*/lib`, as PyTorch installs them), loads it from there itself, so users
//! need no LD_LIBRARY_PATH.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One library crema needs: its display name, cudarc's base name, and the file-name prefix of the
/// library and its companions (cuDNN's sub-libraries, cublasLt, nvrtc-builtins).
struct Lib {
    what: &'static str,
    base: &'static str,
    family: &'static str,
}

const LIBS: [Lib; 4] = [
    Lib {
        what: "the CUDA driver (libcuda)",
        base: "cuda",
        family: "libcuda.",
    },
    Lib {
        what: "cuDNN (libcudnn)",
        base: "cudnn",
        family: "libcudnn",
    },
    Lib {
        what: "cuBLAS (libcublas)",
        base: "cublas",
        family: "libcublas",
    },
    Lib {
        what: "NVRTC (libnvrtc)",
        base: "nvrtc",
        family: "libnvrtc",
    },
];

/// Checks once per process that every CUDA library loads; the error names what is missing and
/// every place searched.
pub fn ensure_libraries() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT.get_or_init(check_and_preload).clone()
}

/// True when one of cudarc's candidate names for `base` opens through the system loader. The
/// library stays loaded: cudarc opens the same name next, which then costs nothing (closing it
/// here would unmap it, and the second load would map and relocate it all again).
fn loads_by_name(base: &str) -> bool {
    cudarc::get_lib_name_candidates(base).iter().any(|name| {
        // SAFETY: loading a vendor library runs its initialisers, which is what cudarc would do.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => {
                std::mem::forget(lib);
                true
            }
            Err(_) => false,
        }
    })
}

fn check_and_preload() -> Result<(), String> {
    let mut missing: Vec<&Lib> = LIBS.iter().filter(|l| !loads_by_name(l.base)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let dirs = search_dirs();
    let mut notes = Vec::new();
    for lib in &missing {
        for dir in &dirs {
            if has_library(dir, lib.base) {
                if let Err(e) = preload_family(dir, lib.family) {
                    notes.push(format!("{} in {}: {e}", lib.what, dir.display()));
                }
                break;
            }
        }
    }
    missing.retain(|l| !loads_by_name(l.base));
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|l| l.what).collect();
    let looked = if dirs.is_empty() {
        "found no Python nvidia-* wheel folders".to_string()
    } else {
        let d: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!("in [{}]", d.join(", "))
    };
    let mut msg = format!(
        "cannot load {}; looked on the loader path (LD_LIBRARY_PATH={}, ldconfig) and {}. \
         Install the NVIDIA driver (CUDA 13) and cuDNN 9, cuBLAS and NVRTC for CUDA 13 (for example \
         as the nvidia-* Python wheels PyTorch uses), or add their folder to LD_LIBRARY_PATH",
        names.join(", "),
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default(),
        looked
    );
    if !notes.is_empty() {
        msg.push_str(&format!(
            " (found but failed to load: {})",
            notes.join("; ")
        ));
    }
    Err(msg)
}

/// Whether `dir` holds a file named like one of cudarc's candidates for `base`.
fn has_library(dir: &Path, base: &str) -> bool {
    cudarc::get_lib_name_candidates(base)
        .iter()
        .any(|n| dir.join(n).is_file())
}

/// Loads every `family*.so*` in `dir` globally, in passes until nothing more loads, so that the
/// libraries' own dependencies (by soname) and later dlopen()s by bare name find them.
fn preload_family(dir: &Path, family: &str) -> Result<(), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(family) && name.contains(".so")
        })
        .collect();
    files.sort();
    let mut last_err = String::new();
    loop {
        let before = files.len();
        files.retain(|f| {
            let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
            // SAFETY: as in `loads_by_name`; the handle is leaked on purpose so the library stays
            // loaded for the process's lifetime.
            match unsafe { libloading::os::unix::Library::open(Some(f), flags) } {
                Ok(lib) => {
                    std::mem::forget(lib);
                    false
                }
                Err(e) => {
                    last_err = e.to_string();
                    true
                }
            }
        });
        if files.is_empty() {
            return Ok(());
        }
        if files.len() == before {
            return Err(last_err);
        }
    }
}

/// Folders where CUDA libraries live outside the loader path: Python wheels of every python on
/// PATH, of an active virtualenv, of /opt/torch/.venv, and the usual toolkit folders.
fn search_dirs() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("python3").exists() || dir.join("python").exists() {
                if let Some(parent) = dir.parent() {
                    prefixes.push(parent.to_path_buf());
                }
            }
        }
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push(PathBuf::from(v));
    }
    prefixes.push(PathBuf::from("/opt/torch/.venv"));
    prefixes.push(PathBuf::from("/usr/local"));
    prefixes.push(PathBuf::from("/usr"));
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local"));
    }
    let mut dirs = Vec::new();
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            for py in subdirs(&prefix.join(lib), "python3") {
                for pkgs in ["site-packages", "dist-packages"] {
                    for nv in subdirs(&py.join(pkgs).join("nvidia"), "") {
                        push_unique(&mut dirs, nv.join("lib"));
                    }
                }
            }
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/wsl/lib",
    ] {
        push_unique(&mut dirs, PathBuf::from(d));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

fn subdirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

fn push_unique(v: &mut Vec<PathBuf>, p: PathBuf) {
    if !v.contains(&p) {
        v.push(p);
    }
}

/// Checks that NCCL loads, for training on more than one GPU. cudarc opens it as `libnccl.so`
/// (or `libnccl.so.<CUDA major>`), but NCCL's packages (PyTorch's wheel among them) ship only
/// `libnccl.so.2`. When only that is found, crema links `libnccl.so` to it in a folder of its own
/// and starts itself again with that folder on LD_LIBRARY_PATH (the loader reads the variable only
/// at start-up); this happens before any GPU work, so nothing is lost.
#[cfg(feature = "nccl")]
pub fn ensure_nccl() -> Result<(), String> {
    ensure_libraries()?;
    // SAFETY: as in `loads_by_name`: opening the library runs its initialisers.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    const MARK: &str = "CREMA_NCCL_RELAUNCHED";
    let found = find_nccl_so2();
    match found {
        Some(lib) if std::env::var_os(MARK).is_none() => relaunch_with_link(&lib, MARK),
        Some(lib) => Err(format!(
            "NCCL (libnccl) is needed to train on more than one GPU; {} was linked as libnccl.so but still does not load",
            lib.display()
        )),
        None => Err(format!(
            "NCCL (libnccl) is needed to train on more than one GPU but was not found; looked on the loader path (LD_LIBRARY_PATH={}) and in Python nvidia-* wheels. Install NCCL 2 for CUDA 13 (e.g. the nvidia-nccl-cu13 wheel) or add the folder of libnccl.so.2 to LD_LIBRARY_PATH",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
        )),
    }
}

/// Where `libnccl.so.2` is: on LD_LIBRARY_PATH or in a Python wheel's folder.
#[cfg(feature = "nccl")]
fn find_nccl_so2() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(search_dirs());
    for extra in ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join("libnccl.so.2"))
        .find(|p| p.is_file())
}

#[cfg(feature = "nccl")]
fn relaunch_with_link(lib: &Path, mark: &str) -> Result<(), String> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::process::CommandExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lib.hash(&mut h);
    let dir = std::env::temp_dir().join(format!("crema-nccl-{:016x}", h.finish()));
    let link = dir.join("libnccl.so");
    let ok = std::fs::read_link(&link).is_ok_and(|t| t == lib);
    if !ok {
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // Another crema may be making the same link: build it under a private name, then rename.
        let tmp = dir.join(format!("libnccl.so.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(lib, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &link))
            .map_err(|e| format!("linking {} to {}: {e}", link.display(), lib.display()))?;
    }
    let mut path = std::ffi::OsString::from(&dir);
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding crema's own binary: {e}"))?;
    tracing::debug!(
        "NCCL: {} has no libnccl.so beside it; starting again with {} on LD_LIBRARY_PATH",
        lib.display(),
        dir.display()
    );
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path)
        .env(mark, "1")
        .exec();
    Err(format!("starting crema again to load NCCL: {err}"))
}
