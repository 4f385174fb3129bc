mod helpers;
mod hostile;
mod validate;
mod versions;
mod workflows;
