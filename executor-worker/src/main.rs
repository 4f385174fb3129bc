fn main() -> std::process::ExitCode {
    shared_models::service::main::<executor_worker::startup::Worker>()
}
