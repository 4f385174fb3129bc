//! The consumer against real RabbitMQ and PostgreSQL: every test declares its own queues
//! (a unique prefix, deleted afterwards) and its own database.

mod common;

use common::*;
use diesel::prelude::*;
use executor_worker::agents::AgentRegistry;
use executor_worker::consumer::{Consumer, WorkerState};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{json, Value};
use shared_models::db::{blocking, PgPool};
use shared_models::queue::{self, QueueNames, RunJob};
use shared_models::schema::runs;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thygon_testkit::{delete_queues, unique_queue_prefix};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DEADLINE: Duration = Duration::from_secs(30);

fn broker() -> shared_models::queue::Broker {
    thygon_testkit::broker()
}

/// This test's queues, and a publishing channel (with confirms) on them. Dropping it deletes
/// the queues, also when the test fails, since they are durable and would outlive it.
struct TestQueues {
    prefix: String,
    names: QueueNames,
    _connection: Connection,
    channel: Channel,
}

impl TestQueues {
    async fn declare() -> Self {
        let prefix = unique_queue_prefix();
        let names = QueueNames::new(&prefix);
        let connection = queue::connect(&broker(), "thygon-test-publisher")
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("open a channel");
        queue::declare_topology(&channel, &names)
            .await
            .expect("declare the test queues");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("enable publisher confirms");
        TestQueues {
            prefix,
            names,
            _connection: connection,
            channel,
        }
    }

    /// Publish a persistent message to the jobs queue and wait for the broker's confirm.
    async fn publish(&self, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.names.jobs.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        assert!(
            confirm.await.expect("publisher confirm").is_ack(),
            "the broker took the message"
        );
    }

    async fn publish_job(&self, run_id: &str) {
        self.publish(&RunJob::new(run_id, ORG, None).encode()).await;
    }

    /// Ready messages in `queue`, by a passive declare (which never changes the queue).
    async fn message_count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Take every message off the dead-letter queue.
    async fn drain_dead_letters(&self) -> Vec<DeadLetter> {
        let mut dead = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.names.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let properties = &message.delivery.properties;
            dead.push(DeadLetter {
                body: message.delivery.data.clone(),
                reason: string_header(properties, queue::DEAD_LETTER_REASON_HEADER),
                worker: string_header(properties, queue::DEAD_LETTER_WORKER_HEADER),
                persistent: properties.delivery_mode() == &Some(2),
            });
        }
        dead
    }
}

/// A message read back from the dead-letter queue.
#[derive(Debug)]
struct DeadLetter {
    body: Vec<u8>,
    reason: Option<String>,
    worker: Option<String>,
    persistent: bool,
}

fn string_header(properties: &BasicProperties, name: &str) -> Option<String> {
    properties
        .headers()
        .as_ref()?
        .inner()
        .iter()
        .find(|(key, _)| key.as_str() == name)
        .and_then(|(_, value)| match value {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        })
}

impl Drop for TestQueues {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        // Drop cannot await; a thread with its own runtime can, whatever state the test is in.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(delete_queues(&broker(), &prefix));
            }
        })
        .join();
    }
}

/// A consumer running on its own task, and the switch that stops it.
struct RunningConsumer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    state: Arc<WorkerState>,
}

impl RunningConsumer {
    fn start(
        queues: &TestQueues,
        pool: &PgPool,
        agents: AgentRegistry,
        concurrency: usize,
        shutdown_grace: Duration,
    ) -> Self {
        let state = Arc::new(WorkerState::default());
        let consumer = Arc::new(Consumer {
            broker: broker(),
            names: queues.names.clone(),
            concurrency,
            shutdown_grace,
            engine: Arc::new(engine(pool, agents, Duration::from_secs(10))),
            state: state.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        RunningConsumer {
            stop,
            task: tokio::spawn(consumer.run(stopped)),
            state,
        }
    }

    /// Send shutdown and wait (with a deadline) for the consumer to return.
    async fn shut_down(self, deadline: Duration) {
        self.stop.send(true).expect("the consumer is listening");
        tokio::time::timeout(deadline, self.task)
            .await
            .expect("the consumer stops after shutdown")
            .expect("the consumer task did not panic");
        assert!(
            !self.state.consuming.load(Ordering::SeqCst),
            "a stopped consumer is not consuming"
        );
    }
}

async fn count_runs_with_status(pool: &PgPool, status: &'static str) -> i64 {
    blocking(pool, move |conn| {
        runs::table
            .filter(runs::status.eq(status))
            .count()
            .get_result(conn)
    })
    .await
    .expect("count runs")
}

fn two_transform_steps() -> Value {
    json!({ "steps": [
        { "name": "double", "type": "transform", "value": { "n": "{{ variables.i * 2 }}" } },
        { "name": "label", "type": "transform", "value": "run {{ variables.i }} doubled is {{ steps.double.output.n }}" },
    ] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_jobs_are_executed_with_concurrency_four_and_the_consumer_stops_on_shutdown() {
    let db = test_db().await;
    let queues = TestQueues::declare().await;
    let (workflow_id, first) = workflow_with_run(
        &db.pool,
        "doubler",
        two_transform_steps(),
        json!({ "i": 0 }),
    )
    .await;
    let mut run_ids = vec![first];
    run_ids.extend(insert_runs(&db.pool, &workflow_id, 19, |i| json!({ "i": i + 1 })).await);
    for run_id in &run_ids {
        queues.publish_job(run_id).await;
    }

    let consumer = RunningConsumer::start(
        &queues,
        &db.pool,
        AgentRegistry::default(),
        4,
        Duration::from_secs(10),
    );
    let most_in_flight = std::sync::atomic::AtomicUsize::new(0);
    wait_for("all 20 runs to complete", DEADLINE, || async {
        most_in_flight.fetch_max(consumer.state.in_flight().len(), Ordering::SeqCst);
        (count_runs_with_status(&db.pool, "COMPLETED").await == 20).then_some(())
    })
    .await;
    assert!(
        most_in_flight.load(Ordering::SeqCst) <= 4,
        "never more jobs at once than the concurrency"
    );
    assert!(
        consumer.state.consuming.load(Ordering::SeqCst),
        "a running consumer says it is consuming"
    );
    consumer.shut_down(Duration::from_secs(10)).await;

    for (i, run_id) in run_ids.iter().enumerate() {
        let run = get_run(&db.pool, run_id).await;
        assert_eq!(
            run.output,
            Some(json!({ "label": format!("run {i} doubled is {}", i * 2) })),
            "run {run_id}"
        );
        let steps = get_steps(&db.pool, run_id).await;
        assert!(
            steps
                .iter()
                .all(|s| s.status == "COMPLETED" && s.attempt == 1),
            "each step ran once: {steps:?}"
        );
    }
    assert_eq!(
        queues.message_count(&queues.names.jobs).await,
        0,
        "every job was acked"
    );
    assert_eq!(
        queues.message_count(&queues.names.dead_letter_queue).await,
        0,
        "no job was dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_and_a_job_for_an_unknown_run_are_dead_lettered_while_a_valid_job_completes(
) {
    let db = test_db().await;
    let queues = TestQueues::declare().await;
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "doubler",
        two_transform_steps(),
        json!({ "i": 5 }),
    )
    .await;
    let unknown = RunJob::new("run_01unknownrun000000000000", ORG, None);
    let jobs = |outcome: &str| {
        executor_worker::metrics::JOBS_TOTAL
            .with_label_values(&[outcome])
            .get()
    };
    let (poison_before, done_before) = (jobs("poison"), jobs("done"));
    queues.publish(b"not a job").await;
    queues.publish(&unknown.encode()).await;
    queues.publish_job(&run_id).await;

    let consumer = RunningConsumer::start(
        &queues,
        &db.pool,
        AgentRegistry::default(),
        2,
        Duration::from_secs(10),
    );
    wait_for("the valid run to complete", DEADLINE, || async {
        (get_run(&db.pool, &run_id).await.status == "COMPLETED").then_some(())
    })
    .await;
    wait_for("two dead letters", DEADLINE, || async {
        (queues.message_count(&queues.names.dead_letter_queue).await == 2).then_some(())
    })
    .await;
    consumer.shut_down(Duration::from_secs(10)).await;
    // Other tests of this binary count too: at least these.
    assert!(
        jobs("poison") >= poison_before + 2,
        "thygon_jobs_total{{outcome=poison}}"
    );
    assert!(
        jobs("done") > done_before,
        "thygon_jobs_total{{outcome=done}}"
    );

    assert_eq!(
        get_run(&db.pool, &run_id).await.output,
        Some(json!({ "label": "run 5 doubled is 10" }))
    );
    assert_eq!(
        queues.message_count(&queues.names.jobs).await,
        0,
        "nothing is left in the jobs queue"
    );
    let mut dead = queues.drain_dead_letters().await;
    dead.sort_by(|a, b| a.body.cmp(&b.body));
    let mut expected = vec![b"not a job".to_vec(), unknown.encode()];
    expected.sort();
    assert_eq!(
        dead.iter().map(|d| d.body.clone()).collect::<Vec<_>>(),
        expected,
        "exactly the two bad messages were dead-lettered, each once"
    );
    for letter in &dead {
        let reason = letter
            .reason
            .as_deref()
            .unwrap_or_else(|| panic!("a dead letter without its reason: {letter:?}"));
        if letter.body == b"not a job" {
            assert!(
                reason.contains("undecodable job message"),
                "the reason names the problem: {reason}"
            );
        } else {
            assert!(
                reason.contains("run_01unknownrun000000000000")
                    && reason.contains("does not exist"),
                "the reason names the problem: {reason}"
            );
        }
        assert!(
            letter
                .worker
                .as_deref()
                .is_some_and(|w| w.starts_with("test-worker-")),
            "the worker that dead-lettered it is named: {letter:?}"
        );
        assert!(letter.persistent, "a dead letter is persistent");
    }
}

/// An agent that takes `delay` to answer a first attempt (later attempts are answered at
/// once), and the run of a one-step workflow that calls it.
async fn slow_agent_run(pool: &PgPool, delay: Duration) -> (MockServer, AgentRegistry, String) {
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/slow"))
        .and(body_partial_json(json!({ "attempt": 1 })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "output": "done" }))
                .set_delay(delay),
        )
        .mount(&agent)
        .await;
    Mock::given(method("POST"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "output": "done later" })))
        .mount(&agent)
        .await;
    let agents = AgentRegistry::from_toml_str(
        &format!("[agents.slow]\nurl = \"{}/slow\"\n", agent.uri()),
        None,
    )
    .expect("agents file");
    let definition = json!({ "steps": [{ "name": "think", "type": "agent", "agentId": "slow", "instructions": "take your time" }] });
    let (_, run_id) = workflow_with_run(pool, "slow", definition, json!({})).await;
    (agent, agents, run_id)
}

async fn wait_until_step_running(pool: &PgPool, run_id: &str) {
    wait_for("the step to be running", DEADLINE, || async {
        get_steps(pool, run_id)
            .await
            .first()
            .is_some_and(|s| s.status == "RUNNING")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_job_finish_and_acks_it() {
    let db = test_db().await;
    let queues = TestQueues::declare().await;
    let (_agent, agents, run_id) = slow_agent_run(&db.pool, Duration::from_millis(1500)).await;
    queues.publish_job(&run_id).await;

    let consumer = RunningConsumer::start(&queues, &db.pool, agents, 2, Duration::from_secs(20));
    wait_until_step_running(&db.pool, &run_id).await;
    consumer.shut_down(Duration::from_secs(20)).await;

    assert_eq!(
        get_run(&db.pool, &run_id).await.status,
        "COMPLETED",
        "the in-flight job finished within the grace period"
    );
    assert_eq!(
        queues.message_count(&queues.names.jobs).await,
        0,
        "its message was acked, not handed back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_a_job_still_running_after_the_grace_period() {
    let db = test_db().await;
    let queues = TestQueues::declare().await;
    let (_agent, agents, run_id) = slow_agent_run(&db.pool, Duration::from_secs(20)).await;
    queues.publish_job(&run_id).await;

    let consumer = RunningConsumer::start(&queues, &db.pool, agents, 2, Duration::from_millis(300));
    wait_until_step_running(&db.pool, &run_id).await;
    let stopping = std::time::Instant::now();
    consumer.shut_down(Duration::from_secs(10)).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the consumer did not wait for the slow agent"
    );

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "RUNNING");
    let lease_end = run.lease_expires_at.expect("the run still has a lease row");
    assert!(
        lease_end <= chrono::Utc::now(),
        "the lease ends at once so another worker can take the run: {lease_end}"
    );
    wait_for("the job back in its queue", DEADLINE, || async {
        (queues.message_count(&queues.names.jobs).await == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_handed_back_at_shutdown_is_taken_over_by_another_worker() {
    let db = test_db().await;
    let queues = TestQueues::declare().await;
    let (_agent, agents, run_id) = slow_agent_run(&db.pool, Duration::from_secs(60)).await;
    queues.publish_job(&run_id).await;
    let leaving =
        RunningConsumer::start(&queues, &db.pool, agents.clone(), 1, Duration::from_secs(2));
    wait_until_step_running(&db.pool, &run_id).await;
    let staying = RunningConsumer::start(&queues, &db.pool, agents, 1, Duration::from_secs(10));
    wait_for("the second worker to consume", DEADLINE, || async {
        staying.state.consuming.load(Ordering::SeqCst).then_some(())
    })
    .await;

    leaving.shut_down(Duration::from_secs(10)).await;
    let run = wait_for(
        "the run to complete on the other worker",
        DEADLINE,
        || async {
            let run = get_run(&db.pool, &run_id).await;
            (run.status == "COMPLETED").then_some(run)
        },
    )
    .await;
    staying.shut_down(Duration::from_secs(10)).await;

    assert_eq!(run.output, Some(json!({ "think": "done later" })));
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        (steps[0].status.as_str(), steps[0].attempt),
        ("COMPLETED", 2)
    );
    assert_eq!(queues.message_count(&queues.names.jobs).await, 0);
}
