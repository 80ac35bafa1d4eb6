//! The measuring side of `scripts/bench-e2e.sh`: three probes against a running broker.
//!
//! - `drain`: a bare rdkafka consumer reading a topic from the beginning and doing
//!   nothing with the records, the ceiling any consumer of that broker can reach;
//! - `run-rate`: watches a running `stagestream run` through its `/metrics` until it has
//!   consumed N events and every output it sent is delivered;
//! - `latency`: reads the input and output topics and, for every stage transition
//!   triggered by an event produced after it started, takes the time from the event's
//!   Kafka timestamp (set by `stagestream loadgen` when it produced it) to the moment
//!   the transition is read from the output topic. It also reports the same latency
//!   for the input events themselves (produced -> read by this probe): the floor the
//!   broker and two librdkafka clients set, without stagestream in the path. Both are
//!   also given as p99 per 5 s of production, which shows whether latency grows with
//!   the topics (it does against tansu's in-memory store: docs/performance.md).
//!
//! Each prints one `key=value` line on stdout for the script, and a sentence on stderr.
//! Build: `cargo build --release --example e2e_probe`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Parser)]
struct Cli {
    /// Broker bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The consumer's fetch.wait.max.ms (the service's, for a fair comparison).
    #[arg(long, default_value_t = 5)]
    fetch_wait_ms: u32,
    #[command(subcommand)]
    probe: Probe,
}

#[derive(Subcommand)]
enum Probe {
    /// Drain TOPIC (PARTITIONS partitions) from the beginning until EXPECT records.
    Drain {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partitions: i32,
        #[arg(long)]
        expect: u64,
    },
    /// Watch stagestream's /metrics at ADDRESS until it has consumed EXPECT events and
    /// delivered every output it sent.
    RunRate {
        #[arg(long)]
        metrics: String,
        #[arg(long)]
        expect: u64,
    },
    /// Event-to-output latency of stage transitions, until no output arrived for
    /// QUIET after at least DURATION.
    Latency {
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        partitions: i32,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
        quiet: Duration,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.probe {
        Probe::Drain {
            topic,
            partitions,
            expect,
        } => {
            let consumer = consumer(&cli.bootstrap, cli.fetch_wait_ms, &[(&topic, partitions)])?;
            let (mut count, mut first, mut last) = (0u64, None, Instant::now());
            while count < expect {
                match consumer.poll(Duration::from_secs(10)) {
                    Some(Ok(message)) => {
                        std::hint::black_box(message.payload());
                        first.get_or_insert_with(Instant::now);
                        count += 1;
                        last = Instant::now();
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(format!("no record for 10 s after {count} of {expect}").into()),
                }
            }
            let seconds = (last - first.unwrap_or(last)).as_secs_f64();
            eprintln!(
                "bare consumer: {count} records in {seconds:.3} s: {:.0} records/s",
                count as f64 / seconds
            );
            println!("rate={:.0}", count as f64 / seconds);
        }
        Probe::RunRate { metrics, expect } => {
            // A scrape every 25 ms (each costs the service ~0.3 ms of CPU: scraping more
            // often perturbs what is measured); the start and end are each placed
            // between the scrape before and the scrape after, within 13 ms.
            let mut previous = (Instant::now(), Totals::default());
            let (mut started, mut finished) = (None, None);
            let deadline = Instant::now() + Duration::from_secs(600);
            while finished.is_none() {
                if Instant::now() > deadline {
                    return Err(format!("not done after 600 s: {:?}", previous.1).into());
                }
                std::thread::sleep(Duration::from_millis(25));
                let now = Instant::now();
                let totals = match Totals::scrape(&metrics) {
                    // The service is still starting (slowly under a profiler): it has
                    // consumed nothing yet, so this scrape counts as one that saw zero.
                    Err(error) if started.is_none() && is_connection_refused(error.as_ref()) => {
                        previous = (now, Totals::default());
                        continue;
                    }
                    scraped => scraped?,
                };
                let midpoint = previous.0 + (now - previous.0) / 2;
                if started.is_none() && totals.consumed > 0 {
                    started = Some(midpoint);
                }
                if totals.consumed >= expect && totals.delivered == totals.sent {
                    finished = Some(midpoint);
                }
                previous = (now, totals);
            }
            let seconds = (finished.unwrap() - started.unwrap()).as_secs_f64();
            let totals = previous.1;
            eprintln!(
                "stagestream run: {} events consumed, {} outputs delivered in {seconds:.3} s: {:.0} events/s",
                totals.consumed,
                totals.delivered,
                totals.consumed as f64 / seconds
            );
            println!("rate={:.0}", totals.consumed as f64 / seconds);
        }
        Probe::Latency {
            input,
            output,
            partitions,
            duration,
            quiet,
        } => latency(
            &cli.bootstrap,
            cli.fetch_wait_ms,
            &input,
            &output,
            partitions,
            duration,
            quiet,
        )?,
    }
    Ok(())
}

fn consumer(bootstrap: &str, fetch_wait_ms: u32, topics: &[(&str, i32)]) -> Result<BaseConsumer, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "e2e-probe")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

fn is_connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[derive(Debug, Default)]
struct Totals {
    consumed: u64,
    sent: u64,
    delivered: u64,
}

impl Totals {
    fn scrape(address: &str) -> Result<Totals, Box<dyn std::error::Error>> {
        let mut stream = TcpStream::connect(address)?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        let mut totals = Totals::default();
        for line in body.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            let name = series.split('{').next().unwrap_or(series);
            match name {
                "stagestream_events_consumed_total" => totals.consumed += value as u64,
                // A shadow model's outputs are not the live service's.
                _ if series.contains("model=\"shadow\"") || series.contains("type=\"shadow\"") => {}
                // Every output the engines emitted, each counted once by kind.
                "stagestream_stage_transitions_total"
                | "stagestream_inactivity_events_total"
                | "stagestream_reactivations_total"
                | "stagestream_customers_expired_total"
                | "stagestream_customers_erased_total" => {
                    totals.sent += value as u64;
                }
                "stagestream_produced_messages_total"
                    if series.contains("result=\"ok\"") && !series.contains("type=\"dead_letter\"") =>
                {
                    totals.delivered += value as u64;
                }
                _ => {}
            }
        }
        Ok(totals)
    }
}

fn latency(
    bootstrap: &str,
    fetch_wait_ms: u32,
    input: &str,
    output: &str,
    partitions: i32,
    duration: Duration,
    quiet: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let since = unix_millis();
    // One consumer (its own connection and fetch requests) per topic: tansu serves the
    // partitions of a fetch one after another, listing every stored batch of each, so
    // once those listings outgrow the fetch wait a transition read alongside the input
    // would wait for the input's listings, a delay of the measuring side.
    let inputs = consumer(bootstrap, fetch_wait_ms, &[(input, partitions)])?;
    let outputs = consumer(bootstrap, fetch_wait_ms, &[(output, partitions)])?;
    // Caught up on what was there before: the script starts the load once this says so.
    catch_up(&inputs, partitions)?;
    catch_up(&outputs, partitions)?;
    println!("ready");
    std::io::stdout().flush()?;

    let started = Instant::now();
    let outputs_done = AtomicBool::new(false);
    let (inputs_read, transitions) = std::thread::scope(|scope| {
        let input_reader = scope.spawn(|| read_inputs(&inputs, input, since, &outputs_done));
        let transitions = read_transitions(&outputs, since, started, duration, quiet);
        outputs_done.store(true, Ordering::Relaxed);
        let inputs_read = input_reader.join().expect("the input reader does not panic");
        (inputs_read, transitions)
    });
    let InputsRead {
        produced,
        latencies: input_latencies,
    } = inputs_read?;
    let transitions = transitions?;
    // The first production of a messageId counts (a client retry sends it again).
    let mut produced_at: HashMap<String, i64> = HashMap::with_capacity(produced.len());
    for (message_id, created) in produced {
        produced_at.entry(message_id).or_insert(created);
    }
    let latencies: Vec<(i64, i64)> = transitions
        .iter()
        .filter_map(|(id, read_at)| produced_at.get(id).map(|created| (*created, read_at - created)))
        .collect();
    if latencies.is_empty() {
        return Err("no stage transition matched an event produced during the run".into());
    }
    let by_window = |sample: &[(i64, i64)]| p99_by_window(sample, since);
    let (windows, input_windows) = (by_window(&latencies), by_window(&input_latencies));
    let mut latencies: Vec<i64> = latencies.iter().map(|&(_, latency)| latency).collect();
    let mut input_latencies: Vec<i64> = input_latencies.iter().map(|&(_, latency)| latency).collect();
    let (p50, p99, max) = percentiles(&mut latencies);
    let (floor_p50, floor_p99, floor_max) = percentiles(&mut input_latencies);
    eprintln!(
        "event-to-output latency over {} transitions: p50 {p50} ms, p99 {p99} ms, max {max} ms; \
         input events reached this probe in p50 {floor_p50} ms, p99 {floor_p99} ms, max {floor_max} ms; \
         p99 by {WINDOW_SECONDS} s of production: {windows} ms (input events: {input_windows} ms)",
        latencies.len(),
    );
    println!(
        "transitions={} p50_ms={p50} p99_ms={p99} max_ms={max} \
         input_p50_ms={floor_p50} input_p99_ms={floor_p99} input_max_ms={floor_max} \
         p99_ms_by_{WINDOW_SECONDS}s={windows} input_p99_ms_by_{WINDOW_SECONDS}s={input_windows}",
        latencies.len(),
    );
    Ok(())
}

/// The width of the windows `latency` reports p99 for, by when the event was produced:
/// whether latency grows as the topics do.
const WINDOW_SECONDS: i64 = 5;

/// Reads the consumer's partitions until each has reported its end once.
fn catch_up(consumer: &BaseConsumer, partitions: i32) -> Result<(), Box<dyn std::error::Error>> {
    let mut at_end = 0;
    while at_end < partitions {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => return Err("no answer from the broker for 30 s".into()),
        }
    }
    Ok(())
}

// Readers append to vectors sized for a million records, joined after the run: a hash
// map growing while reading stopped the loop for tens of milliseconds at each doubling,
// and those stalls showed up as latency.
const EXPECTED: usize = 1 << 20;

/// What the input reader saw of events produced after `since`.
struct InputsRead {
    /// (messageId, Kafka timestamp) of each event.
    produced: Vec<(String, i64)>,
    /// (Kafka timestamp, ms from it until this probe read the event) of each record.
    latencies: Vec<(i64, i64)>,
}

fn read_inputs(
    consumer: &BaseConsumer,
    topic: &str,
    since: i64,
    outputs_done: &AtomicBool,
) -> Result<InputsRead, String> {
    let mut read = InputsRead {
        produced: Vec::with_capacity(EXPECTED),
        latencies: Vec::with_capacity(EXPECTED),
    };
    while !outputs_done.load(Ordering::Relaxed) {
        let Some((created, read_at, message)) = poll_since(consumer, since, topic)? else {
            continue;
        };
        read.latencies.push((created, read_at - created));
        if let Some(Ok(event)) = message.payload().map(serde_json::from_slice::<Input>) {
            read.produced.push((event.message_id, created));
        }
    }
    Ok(read)
}

/// (trigger messageId, when the transition was read), until no output arrived for
/// `quiet` after at least `duration` from `started`.
fn read_transitions(
    consumer: &BaseConsumer,
    since: i64,
    started: Instant,
    duration: Duration,
    quiet: Duration,
) -> Result<Vec<(String, i64)>, String> {
    let mut transitions = Vec::with_capacity(EXPECTED / 4);
    let mut last_output = Instant::now();
    while started.elapsed() < duration || last_output.elapsed() < quiet {
        let Some((_, read_at, message)) = poll_since(consumer, since, "the output topic")? else {
            continue;
        };
        last_output = Instant::now();
        if let Some(trigger) = message
            .payload()
            .and_then(|payload| serde_json::from_slice::<Output>(payload).ok())
            .and_then(|output| output.trigger.or(output.data.and_then(|data| data.trigger)))
        {
            transitions.push((trigger.message_id, read_at));
        }
    }
    Ok(transitions)
}

/// One poll of up to 100 ms: (Kafka timestamp, when read, payload) of a record produced
/// at or after `since`, or None for nothing, a partition's end, a topic not there yet,
/// or an older record. `topic` names what is read in an error.
fn poll_since<'c>(
    consumer: &'c BaseConsumer,
    since: i64,
    topic: &str,
) -> Result<Option<(i64, i64, BorrowedMessage<'c>)>, String> {
    let message = match consumer.poll(Duration::from_millis(100)) {
        None | Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
        Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition))) => {
            return Ok(None)
        }
        Some(Err(error)) => return Err(format!("reading {topic}: {error}")),
        Some(Ok(message)) => message,
    };
    let read_at = unix_millis();
    let Some(created) = message.timestamp().to_millis().filter(|&t| t >= since) else {
        return Ok(None);
    };
    Ok(Some((created, read_at, message)))
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// p99 of each WINDOW_SECONDS of (Kafka timestamp, latency) from `since`, as "a/b/c".
fn p99_by_window(sample: &[(i64, i64)], since: i64) -> String {
    let mut windows: Vec<Vec<i64>> = Vec::new();
    for &(created, latency) in sample {
        let window = ((created - since) / (WINDOW_SECONDS * 1000)) as usize;
        if windows.len() <= window {
            windows.resize_with(window + 1, Vec::new);
        }
        windows[window].push(latency);
    }
    let p99s: Vec<String> = windows
        .iter_mut()
        .map(|window| match window.is_empty() {
            true => "-".to_string(),
            false => percentiles(window).1.to_string(),
        })
        .collect();
    p99s.join("/")
}

/// p50, p99 and max of a non-empty sample, sorting it.
fn percentiles(sample: &mut [i64]) -> (i64, i64, i64) {
    sample.sort_unstable();
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), sample[sample.len() - 1])
}

#[derive(serde::Deserialize)]
struct Input {
    #[serde(rename = "messageId")]
    message_id: String,
}

/// A transition's `data` (binary content mode) or the whole CloudEvent (structured).
#[derive(serde::Deserialize)]
struct Output {
    trigger: Option<Trigger>,
    data: Option<Box<Output>>,
}

#[derive(serde::Deserialize)]
struct Trigger {
    message_id: String,
}
