fn main() -> std::process::ExitCode {
    shared_models::service::main::<runtime_service::startup::RuntimeService>()
}
