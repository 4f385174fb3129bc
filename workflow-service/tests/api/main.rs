mod helpers;
mod validate;
mod versions;
mod workflows;
