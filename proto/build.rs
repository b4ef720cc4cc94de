//! Compiles caffe.proto with protox (pure Rust, no protoc needed) and generates prost types.
//! The encoded descriptor set is also written out so prototxt text can be parsed by reflection.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=caffe.proto");
    let fds = match protox::compile(["caffe.proto"], ["."]) {
        Ok(fds) => fds,
        Err(e) => panic!("proto/caffe.proto does not compile: {e}"),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("caffe_descriptor.bin"), bytes).expect("write descriptor set");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate Rust types from caffe.proto");
}
