//! The fixed label values of the service's metrics, declared once as enums: code that
//! counts names a variant, and `Metrics::initialise` creates every series up front.
//! Values that come from the configured model (stage and threshold names) or from the
//! assignment (topic, partition, broker) are not here; a customer id never is a label.

/// Declares a label enum with its `ALL` variants, in declaration order (so
/// `variant as usize` indexes arrays built from `ALL`), and its label text.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

labels! {
    /// `result` of `stagestream_events_consumed_total`: what became of an input message.
    Consumed {
        Ok = "ok",
        Invalid = "invalid",
        Duplicate = "duplicate",
        Ignored = "ignored",
        Late = "late",
        /// An erase request (tombstone or erase line), applied.
        Erase = "erase",
    }
}

labels! {
    /// `type` of `stagestream_produced_messages_total`: what a produced record was.
    Produced {
        StageChanged = "stage_changed",
        CustomerInactive = "customer_inactive",
        CustomerReactivated = "customer_reactivated",
        CustomerExpired = "customer_expired",
        CustomerErased = "customer_erased",
        DeadLetter = "dead_letter",
        /// Any output of the shadow model, to `shadow.topic`.
        Shadow = "shadow",
    }
}

labels! {
    /// `model` of `stagestream_stage_transitions_total` and
    /// `stagestream_inactivity_events_total` while a shadow model runs.
    ModelRole {
        Live = "live",
        Shadow = "shadow",
    }
}

labels! {
    /// `route` of the lookup API's metrics.
    Route {
        Get = "get_customer",
        Delete = "delete_customer",
    }
}

labels! {
    /// `result` of deliveries, snapshot writes and commits.
    Outcome {
        Ok = "ok",
        Error = "error",
    }
}

labels! {
    /// `kind` of `stagestream_rebalances_total`.
    RebalanceKind {
        Assign = "assign",
        Revoke = "revoke",
    }
}

labels! {
    /// `step` of `stagestream_snapshot_duration_seconds`.
    SnapshotStep {
        /// One step of the image copy on the owner thread: the only pause.
        Pause = "pause",
        Encode = "encode",
        Write = "write",
    }
}

labels! {
    /// `client` of the Kafka-client metrics.
    Client {
        Consumer = "consumer",
        Producer = "producer",
    }
}

labels! {
    /// `direction` of `stagestream_kafka_broker_errors_total`.
    Direction {
        Tx = "tx",
        Rx = "rx",
    }
}

impl Outcome {
    /// `Ok` when `ok`, else `Error`.
    pub fn of(ok: bool) -> Outcome {
        match ok {
            true => Outcome::Ok,
            false => Outcome::Error,
        }
    }
}
