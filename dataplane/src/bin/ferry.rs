//! The `ferry` binary: a thin shell over `ferry_dataplane::cli`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ferry_dataplane::cli::main());
}
