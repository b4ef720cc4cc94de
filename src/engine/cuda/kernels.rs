//! crema's own CUDA kernels (kernels/*.cu): compiled by NVRTC to the GPU's machine code once per
//! machine (kept in a cache directory between processes), loaded once per device, launched by
//! name.

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Prepended to every kernel file.
const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// The kernel files, each compiled as a program and loaded as a module of its own, so NVRTC
/// works on all of them at once.
const FILES: [(&str, &str); 6] = [
    (
        "elementwise.cu",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    (
        "activation.cu",
        include_str!("../../../kernels/activation.cu"),
    ),
    ("pool.cu", include_str!("../../../kernels/pool.cu")),
    ("lrn.cu", include_str!("../../../kernels/lrn.cu")),
    ("softmax.cu", include_str!("../../../kernels/softmax.cu")),
    ("channel.cu", include_str!("../../../kernels/channel.cu")),
];

/// Threads per block for every launch (the reduction kernels assume exactly this).
pub const BLOCK: u32 = 256;

/// A kernel argument: device pointers travel as u64.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    U64(u64),
    I32(i32),
    F32(f32),
    F64(f64),
}

/// A compiled kernel file and, when it was read from the kernel cache, the cache file.
#[derive(Clone)]
struct Image {
    code: Ptx,
    cached: Option<PathBuf>,
}

/// A GPU's compute capability (major, minor).
type Capability = (i32, i32);
/// Every kernel file compiled for one capability, or why not.
type Compiled = Result<Vec<Image>, String>;

/// Every kernel file (in [`FILES`] order) compiled for GPUs of compute capability `cc`, once per
/// process and capability: each file on a thread of its own, read from the kernel cache where an
/// earlier process left it.
fn images(cc: Capability) -> Compiled {
    static DONE: Mutex<Vec<(Capability, Compiled)>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, r)) = done.iter().find(|(c, _)| *c == cc) {
        return r.clone();
    }
    let started = std::time::Instant::now();
    let arch = format!("sm_{}{}", cc.0, cc.1);
    let all: Vec<(Result<Image, String>, f64)> = std::thread::scope(|s| {
        let jobs: Vec<_> = FILES
            .iter()
            .map(|&(file, text)| {
                let arch = &arch;
                s.spawn(move || {
                    let t = std::time::Instant::now();
                    (image(file, text, arch), t.elapsed().as_secs_f64() * 1e3)
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| (Err("NVRTC panicked".into()), 0.0))
            })
            .collect()
    });
    let each: Vec<String> = FILES
        .iter()
        .zip(&all)
        .map(|((file, _), (r, ms))| {
            let how = match r {
                Ok(Image {
                    cached: Some(_), ..
                }) => " cached",
                _ => "",
            };
            format!("{file} {ms:.0}{how}")
        })
        .collect();
    tracing::debug!(
        "kernels/*.cu for {arch} ready in {:.0} ms ({})",
        started.elapsed().as_secs_f64() * 1e3,
        each.join(", ")
    );
    let r: Compiled = all.into_iter().map(|(r, _)| r).collect();
    done.push((cc, r.clone()));
    r
}

/// Starts compiling the kernels for GPU `ordinal` on a thread of its own, so that NVRTC works
/// while the caller sets up the context and the cuBLAS and cuDNN handles; [`Kernels::load`]
/// then takes the result (or compiles, if this could not start). Best effort.
pub fn prepare(ordinal: usize) {
    use cudarc::driver::{result::device, sys::CUdevice_attribute as A};
    // SAFETY: the driver is initialised (device_count ran); `dev` comes from it.
    let cc = device::get(ordinal as i32).and_then(|dev| unsafe {
        Ok((
            device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ))
    });
    if let Ok(cc) = cc {
        std::thread::spawn(move || {
            let _ = images(cc);
        });
    }
}

/// One kernel file as machine code for `arch`, from the kernel cache or NVRTC (which then leaves
/// it in the cache); PTX for the driver to finish where NVRTC cannot target `arch`.
fn image(file: &str, text: &str, arch: &str) -> Result<Image, String> {
    let path = cache_file(file, text, arch);
    if let Some(p) = &path {
        // Machine code is an ELF file; anything else there is not ours to load.
        if let Ok(bin) = std::fs::read(p) {
            if bin.starts_with(b"\x7fELF") {
                return Ok(Image {
                    code: Ptx::from_binary(bin),
                    cached: path,
                });
            }
        }
    }
    let code = match nvrtc(file, text, Some(arch)) {
        Ok(bin) => {
            if let Some(p) = &path {
                store(p, &bin);
            }
            Ptx::from_binary(bin)
        }
        Err(e) => {
            tracing::debug!("{e}; compiling to PTX for the driver to finish");
            let ptx = nvrtc(file, text, None)?;
            Ptx::from_src(
                String::from_utf8_lossy(&ptx)
                    .trim_end_matches('\0')
                    .to_string(),
            )
        }
    };
    Ok(Image { code, cached: None })
}

/// Compiles one kernel file (after common.cuh) with NVRTC: machine code for `arch`, or PTX.
fn nvrtc(file: &str, text: &str, arch: Option<&str>) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    let fail = |e: &dyn std::fmt::Debug| format!("NVRTC could not compile kernels/{file}: {e:?}");
    let src = CString::new(format!("{COMMON}\n{text}")).map_err(|e| fail(&e))?;
    let name = CString::new(file).map_err(|e| fail(&e))?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| fail(&e))?;
    let mut opts = vec![FMAD.to_string()];
    if let Some(a) = arch {
        opts.push(format!("--gpu-architecture={a}"));
    }
    // SAFETY: `prog` is live from create_program until destroy_program below; each output buffer
    // is as long as NVRTC's own size for it.
    let out = unsafe {
        let r = match result::compile_program(prog, &opts) {
            Ok(()) => {
                let mut n = 0usize;
                let (size, get): (_, unsafe fn(_, *mut std::ffi::c_char) -> _) = if arch.is_some() {
                    (sys::nvrtcGetCUBINSize(prog, &mut n), sys::nvrtcGetCUBIN)
                } else {
                    (sys::nvrtcGetPTXSize(prog, &mut n), sys::nvrtcGetPTX)
                };
                let mut buf = vec![0u8; n];
                size.result()
                    .and_then(|_| get(prog, buf.as_mut_ptr() as *mut _).result())
                    .map(|_| buf)
                    .map_err(|e| fail(&e))
            }
            Err(e) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log
                    .iter()
                    .map(|&c| c as u8)
                    .take_while(|&c| c != 0)
                    .collect();
                Err(format!(
                    "NVRTC could not compile kernels/{file} ({e:?}):\n{}",
                    String::from_utf8_lossy(&log)
                ))
            }
        };
        let _ = result::destroy_program(prog);
        r
    };
    out
}

/// No FMA contraction: the CPU engine rounds every product, and the GPU results are checked
/// against it.
const FMAD: &str = "--fmad=false";

/// Where the machine code of `file` for `arch` is kept between processes, named by a hash of
/// everything that shapes it: `$CREMA_CACHE_DIR/kernels` (no cache when that is empty), else
/// `$XDG_CACHE_HOME/crema/kernels` or `~/.cache/crema/kernels`.
fn cache_file(file: &str, text: &str, arch: &str) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let dir = cache_root(|k| std::env::var_os(k))?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (ensure_libraries); the out-pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        COMMON,
        text,
        FMAD,
        arch,
        major,
        minor,
        env!("CARGO_PKG_VERSION"),
    )
        .hash(&mut h);
    let stem = file.trim_end_matches(".cu");
    Some(
        dir.join("kernels")
            .join(format!("{stem}-{arch}-{:016x}.cubin", h.finish())),
    )
}

/// crema's cache directory from the environment (`var` reads a variable): `$CREMA_CACHE_DIR`
/// (none when empty), else `$XDG_CACHE_HOME/crema`, else `$HOME/.cache/crema`.
fn cache_root(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty());
    match var("CREMA_CACHE_DIR") {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(PathBuf::from(d)),
        None => match set("XDG_CACHE_HOME") {
            Some(x) => Some(PathBuf::from(x).join("crema")),
            None => Some(PathBuf::from(set("HOME")?).join(".cache").join("crema")),
        },
    }
}

/// Leaves `bin` at `path` for later processes; best effort (a cache that cannot be written only
/// costs the next process a compilation). Written under a private name, then renamed, so a
/// reader never sees half a file.
fn store(path: &Path, bin: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let r = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&tmp, bin))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("cannot keep compiled kernels in {}: {e}", path.display());
    }
}

/// The loaded modules of one device (one per kernel file) and the functions looked up so far.
pub struct Kernels {
    modules: Vec<Arc<CudaModule>>,
    functions: RefCell<HashMap<&'static str, CudaFunction>>,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, String> {
        let cc = ctx
            .compute_capability()
            .map_err(|e| format!("reading the GPU's compute capability: {e}"))?;
        let mut modules = Vec::with_capacity(FILES.len());
        for (img, (file, text)) in images(cc)?.into_iter().zip(FILES) {
            let m = match (ctx.load_module(img.code), img.cached) {
                (Ok(m), _) => m,
                // A cache file the driver rejects (damaged, or from another driver) is replaced.
                (Err(e), Some(stale)) => {
                    tracing::debug!("{}: {e}; compiling again", stale.display());
                    let _ = std::fs::remove_file(&stale);
                    let fresh = image(file, text, &format!("sm_{}{}", cc.0, cc.1))?;
                    ctx.load_module(fresh.code)
                        .map_err(|e| format!("loading the code of kernels/{file}: {e}"))?
                }
                (Err(e), None) => return Err(format!("loading the code of kernels/{file}: {e}")),
            };
            modules.push(m);
        }
        Ok(Kernels {
            modules,
            functions: RefCell::new(HashMap::new()),
        })
    }

    fn function(&self, name: &'static str) -> CudaFunction {
        if let Some(f) = self.functions.borrow().get(name) {
            return f.clone();
        }
        let declared = format!("void {name}(");
        let f = FILES
            .iter()
            .position(|(_, text)| text.contains(&declared))
            .and_then(|i| self.modules[i].load_function(name).ok())
            .unwrap_or_else(|| panic!("kernel `{name}` missing from kernels/*.cu"));
        self.functions.borrow_mut().insert(name, f.clone());
        f
    }

    /// Launches `name` on `stream` with `grid` blocks of [`BLOCK`] threads.
    pub fn launch(&self, stream: &Arc<CudaStream>, name: &'static str, grid: u32, args: &[Arg]) {
        if grid == 0 {
            return;
        }
        let f = self.function(name);
        let mut b = stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::U64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::F64(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every kernel's parameter list is (u64 | int | float)*, matched by the callers in
        // engine::cuda, and each pointer argument comes from a live device buffer of that engine
        // with at least as many elements as the counts passed alongside it.
        if let Err(e) = unsafe { b.launch(cfg) } {
            panic!("CUDA kernel `{name}` failed to launch: {e}");
        }
    }
}

/// Blocks for a grid-stride loop over `n` elements.
pub fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).min(1 << 20) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn cache_root_follows_the_environment() {
        let all = [
            ("CREMA_CACHE_DIR", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_root(env(&all)), Some(PathBuf::from("/c")));
        assert_eq!(
            cache_root(env(&[("CREMA_CACHE_DIR", ""), ("HOME", "/h")])),
            None
        );
        assert_eq!(
            cache_root(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/crema"))
        );
        assert_eq!(
            cache_root(env(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/crema"))
        );
        assert_eq!(cache_root(env(&[])), None);
    }

    #[test]
    fn store_writes_whole_files_and_survives_a_cache_it_cannot_write() {
        let dir = std::env::temp_dir().join(format!("crema-kcache-{}", std::process::id()));
        let path = dir.join("kernels").join("pool-sm_90-0.cubin");
        store(&path, b"\x7fELF1");
        store(&path, b"\x7fELF2");
        assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF2");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary files left behind");
        // A regular file where the directory should be: nothing written, no panic.
        let blocked = dir.join("file");
        std::fs::write(&blocked, b"x").unwrap();
        store(&blocked.join("k.cubin"), b"\x7fELF");
        assert!(!blocked.join("k.cubin").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
