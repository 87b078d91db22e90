//! The event-loop side of a virtio-blk device: waits on the queue's ioeventfd and serves the
//! queue when the guest notifies.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioBlock;

/// Event-manager subscriber for one block device's queue.
pub struct BlockHandler {
    device: Arc<Mutex<VirtioBlock>>,
    kick: EventFd,
}

impl BlockHandler {
    const QUEUE_KICK: u32 = 0;

    /// Serves `device` when `kick` (the queue's ioeventfd) fires.
    pub fn new(device: Arc<Mutex<VirtioBlock>>, kick: EventFd) -> Self {
        Self { device, kick }
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.kick,
            Self::QUEUE_KICK,
            EventSet::IN,
        )) {
            error!("block: cannot watch queue notifications: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            Self::QUEUE_KICK => {
                let _ = self.kick.read();
                let more = self
                    .device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .process_queue();
                if more {
                    // Requests left after a bounded batch: come back after other events.
                    let _ = self.kick.write(1);
                }
            }
            other => {
                warn!("block: unexpected event {other}");
                let _ = ops.remove(events);
            }
        }
    }
}
