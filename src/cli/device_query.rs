//! `crema device-query`: the GPUs and CUDA libraries this build can use (Caffe's `device_query`).

/// `device-query` takes no flags.
#[derive(clap::Args, Debug)]
pub struct Args {}

#[cfg(feature = "cuda")]
pub fn run(_args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (v, devices) = crema::engine::cuda::query()?;
    println!("CUDA driver: {}.{}", v.driver.0, v.driver.1);
    println!("cuDNN: {}.{}.{}", v.cudnn.0, v.cudnn.1, v.cudnn.2);
    println!("cuBLAS: {}.{}.{}", v.cublas.0, v.cublas.1, v.cublas.2);
    println!("NVRTC: {}.{}", v.nvrtc.0, v.nvrtc.1);
    if devices.is_empty() {
        return Err("the CUDA libraries load, but the driver reports no GPU".into());
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    for d in &devices {
        println!("Device id: {}", d.ordinal);
        println!("  Name: {}", d.name);
        println!(
            "  Compute capability: {}.{}",
            d.compute_capability.0, d.compute_capability.1
        );
        println!("  Multiprocessors: {}", d.multiprocessors);
        println!("  Total memory: {:.0} MiB", mib(d.total_mem));
        println!("  Free memory: {:.0} MiB", mib(d.free_mem));
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn run(_args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    Err("this build of crema has no CUDA support; rebuild with `cargo build --release --features cuda`".into())
}
