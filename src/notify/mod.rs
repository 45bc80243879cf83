//! Telling the world about a batch: the gate's `gate.open` / `gate.done` events and
//! alerts, queued in the outbox before they are sent, signed as webhooks and
//! rendered through templates. A notice is written to the outbox before it is sent,
//! so that a crash never loses one.

pub(crate) mod alert;
pub(crate) mod gate;
pub(crate) mod outbox;
pub(crate) mod template;
pub(crate) mod webhook;
