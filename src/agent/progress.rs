//! A hook through which a foreground agent reports the long steps of joining and leaving, so
//! that the command line can draw progress on a terminal (src/cli/progress.rs). Tests,
//! `agent dev` and anything else that does not care pass [`quiet`].

use std::sync::Arc;

/// One step of joining or leaving, in the order they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the ring to take this node, through `seed`.
    Joining {
        /// The member's ring address the agent joins through.
        seed: String,
    },
    /// The ring took the node.
    Joined,
    /// `total` records this node now owns are arriving from its successor.
    Receiving {
        /// How many records arrive.
        total: usize,
    },
    /// `count` more of them are stored.
    Received {
        /// How many were stored by this step.
        count: usize,
    },
    /// Leaving: `total` records are being handed to the successor.
    HandingOver {
        /// How many records are handed over.
        total: usize,
    },
    /// `count` more of them were confirmed by the successor.
    HandedOver {
        /// How many were confirmed by this step.
        count: usize,
    },
    /// The transfer under way (receiving or handing over) ended, successfully or not.
    Finished,
}

/// Called with every [`Step`]; must return quickly (it runs on the agent's tasks).
pub type Progress = Arc<dyn Fn(Step) + Send + Sync>;

/// A hook that shows nothing.
pub fn quiet() -> Progress {
    Arc::new(|_| {})
}
