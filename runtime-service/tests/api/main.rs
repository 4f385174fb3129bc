mod helpers;
mod queueing;
mod runs;
mod trigger;
