fn main() -> std::process::ExitCode {
    ninjapoll::main()
}
