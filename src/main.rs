fn main() -> std::process::ExitCode {
    ninjapoll::cli::main()
}
