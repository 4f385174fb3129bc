fn main() -> std::process::ExitCode {
    shared_models::service::main::<workflow_service::startup::WorkflowService>()
}
