mod control;
mod events;
mod helpers;
mod queueing;
mod runs;
mod scheduler;
mod trigger;
