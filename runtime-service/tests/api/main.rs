mod control;
mod events;
mod helpers;
mod queueing;
mod reaper;
mod runs;
mod scheduler;
mod trigger;
