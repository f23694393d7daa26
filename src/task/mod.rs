//! The task domain: identifiers, statuses, records, payloads, task definitions, the registry of
//! handlers and the retry policy. Nothing here touches storage or the runtime.

mod handler;
mod id;
pub(crate) mod lifecycle;
mod order;
mod outcome;
mod payload;
mod record;
mod registry;
mod retry;
mod status;
mod stored;

pub use handler::{Task, TaskError, TaskErrorKind};
pub use id::TaskId;
pub(crate) use order::ReadyOrder;
pub use outcome::Outcome;
pub use payload::Payload;
pub use record::{FailureKind, TaskFailure, TaskRecord};
pub use registry::Registry;
pub(crate) use registry::{HandlerFn, RunError};
pub use retry::RetryPolicy;
pub use status::TaskStatus;
pub(crate) use stored::{StoredFailure, StoredTask};
