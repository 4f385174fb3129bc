mod helpers;
mod workflows;
