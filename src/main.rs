//! The ragspool binary: everything happens in [`ragspool::app::run`].

fn main() -> std::process::ExitCode {
    ragspool::app::run()
}
