//! `input.partitioner` against librdkafka's own choice: for each partitioner name, a
//! producer configured with it sends keyed records to librdkafka's mock cluster, and
//! the partition each record landed in must be the one stagestream computes for the key
//! (what the lookup API redirects by and `DELETE` produces with).

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use stagestream::partitioner::Partitioner;

#[test]
fn each_partitioner_picks_the_partition_librdkafka_picks() {
    let cluster = MockCluster::new(1).unwrap();
    // Customer ids are never empty (an empty key counts as none: a random partition).
    let keys: Vec<String> = (0..300)
        .map(|i| format!("customer-{i}"))
        .chain(["a", "ab", "abc", "é🙂", "0a8f5b1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b"].map(str::to_owned))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (topic, partitions) in [("seven", 7), ("sixty-four", 64)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
        for partitioner in Partitioner::ALL {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .set("partitioner", partitioner.name())
                .create()
                .unwrap();
            for key in &keys {
                let record = FutureRecord::to(topic).key(key.as_str()).payload("{}");
                let delivered = runtime
                    .block_on(producer.send(record, Timeout::After(Duration::from_secs(10))))
                    .unwrap();
                assert_eq!(
                    delivered.partition,
                    partitioner.partition(key.as_bytes(), partitions as u32),
                    "{partitioner} of {key:?} among {partitions}"
                );
            }
        }
    }
}
