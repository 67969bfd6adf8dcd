//! `distillery-worker`: the command a DistillationJob's or Benchmark's pod runs, and the README's
//! main job run locally. All logic lives in the library.

fn main() -> std::process::ExitCode {
    distillery_worker::cli::main()
}
