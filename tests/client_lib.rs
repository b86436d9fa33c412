//! tidepool-client against the real server.

use bytes::Bytes;
use tidepool_client::{
    blocking, chain_keys, Client, ClientError, ClientOptions, PlaneChoice, PutOptions,
};
use tidepool_tests::Server;

fn addr(s: &Server) -> String {
    format!("127.0.0.1:{}", s.port)
}

fn block(i: usize, len: usize) -> Bytes {
    (0..len)
        .map(|j| (i * 13 + j) as u8)
        .collect::<Vec<_>>()
        .into()
}

#[test]
fn async_client_round_trip() {
    let s = Server::start(&[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::connect(&addr(&s), 4).await.unwrap();
        let tokens: Vec<u32> = (0..100).collect();
        let keys = chain_keys(b"model", 16, &tokens);
        assert_eq!(keys.len(), 6, "only full blocks");
        let blocks: Vec<(Bytes, Bytes)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), block(i, 70_000)))
            .collect();
        c.put_chain(&blocks[..4], None).await.unwrap();
        // The client's hash is the server's: KV.MATCHTOKENS agrees.
        assert_eq!(c.match_prefix(&keys, None).await.unwrap().matched, 4);
        assert_eq!(
            c.match_tokens(b"model", 16, &tokens, None)
                .await
                .unwrap()
                .matched,
            4
        );
        let m = c.match_prefix(&keys, Some(60_000)).await.unwrap();
        assert_eq!(m.matched, 4);
        assert!(c.release(m.lease.unwrap()).await.unwrap());
        assert!(!c.release(m.lease.unwrap()).await.unwrap());
        // Reads into caller buffers.
        let mut storage = vec![vec![0u8; 70_000]; 6];
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
        let got = c.get_many_into(&keys, &mut bufs).await.unwrap();
        assert_eq!(
            got,
            [
                Some(70_000),
                Some(70_000),
                Some(70_000),
                Some(70_000),
                None,
                None
            ]
        );
        assert_eq!(&storage[2][..], &block(2, 70_000)[..]);
        let mut small = [0u8; 10];
        let mut one: Vec<&mut [u8]> = vec![&mut small[..]];
        assert!(
            c.get_many_into(&keys[..1], &mut one).await.is_err(),
            "buffer too small"
        );
        assert_eq!(
            c.exists(&keys[3..5]).await.unwrap(),
            [Some("dram".to_string()), None]
        );
        // Per-block results of a batch, and typed server errors.
        let results = c
            .put_many(
                &[(keys[5].clone(), block(5, 10))],
                false,
                Some(Bytes::from_static(b"missing")),
            )
            .await
            .unwrap();
        assert_eq!(results[0].as_ref().unwrap_err().code(), Some("NOPARENT"));
        let e = c
            .put(
                Bytes::from_static(b"k"),
                Bytes::from_static(b"v"),
                &PutOptions {
                    tier: Some("gpu"),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("NOTIER"));
        let st = c.stats().await.unwrap();
        assert_eq!(st.tiers["dram"]["blocks"], 4);
        assert!(st.keys_queried >= 18 && st.prefix_hit_ratio > 0.0);
        assert_eq!(c.delete(&keys[..1]).await.unwrap(), 1);
        assert_eq!(c.match_prefix(&keys, None).await.unwrap().matched, 0);
        // Many tasks share one client.
        let c = std::sync::Arc::new(c);
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let c = c.clone();
                tokio::spawn(async move {
                    for i in 0..50 {
                        let k = Bytes::from(format!("t{t}-{i}"));
                        c.put(k.clone(), block(t + i, 1000), &PutOptions::default())
                            .await
                            .unwrap();
                        assert_eq!(c.get(k).await.unwrap().unwrap(), block(t + i, 1000));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn blocking_client() {
    let s = Server::start(&[]);
    let c = blocking::Client::connect(&addr(&s), 2).unwrap();
    let keys = chain_keys(b"s", 4, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let blocks: Vec<(Bytes, Bytes)> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from_static(b"kv")))
        .collect();
    c.put_chain(&blocks, None).unwrap();
    assert_eq!(
        c.match_tokens(b"s", 4, &[1, 2, 3, 4, 5, 6, 7, 8], None)
            .unwrap()
            .matched,
        2
    );
    assert_eq!(
        c.get_many(&keys).unwrap(),
        [
            Some(Bytes::from_static(b"kv")),
            Some(Bytes::from_static(b"kv"))
        ]
    );
    assert_eq!(c.delete(&keys[..1]).unwrap(), 1);
    assert_eq!(
        c.exists(&keys).unwrap(),
        [None, None],
        "the chain went with its head"
    );
    // Over each data plane: blocks large enough to leave RESP, read back
    // into caller buffers.
    for (plane, name) in [(PlaneChoice::Shm, "shm"), (PlaneChoice::Tcp, "tcp")] {
        let opts = ClientOptions {
            plane,
            ..ClientOptions::default()
        };
        let c = blocking::Client::connect_with(&addr(&s), opts).unwrap();
        assert_eq!(c.data_plane(), Some(name));
        let blocks: Vec<(Bytes, Bytes)> = (0..20)
            .map(|i| {
                let v: Vec<u8> = (0..300_000u32).map(|j| (j as u8) ^ (i as u8)).collect();
                (Bytes::from(format!("{name}-{i}")), Bytes::from(v))
            })
            .collect();
        assert!(c
            .put_many(&blocks, true, None)
            .unwrap()
            .iter()
            .all(|r| r.is_ok()));
        let keys: Vec<Bytes> = blocks.iter().map(|(k, _)| k.clone()).collect();
        let mut storage = vec![vec![0u8; 300_000]; blocks.len()];
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
        let got = c.get_many_into(&keys, &mut bufs).unwrap();
        assert!(got.iter().all(|g| *g == Some(300_000)), "{name}");
        for (i, (_, v)) in blocks.iter().enumerate() {
            assert_eq!(&storage[i][..], &v[..], "{name} {i}");
        }
        assert_eq!(c.match_prefix(&keys, None).unwrap().matched, 20);
    }
}

/// The blocking client refuses to block a thread of an async runtime (a
/// clear error, not tokio's panic), and dropping it there does not panic.
#[test]
fn the_blocking_client_refuses_to_block_an_async_runtime() {
    let s = Server::start(&[]);
    let c = blocking::Client::connect(&addr(&s), 1).unwrap();
    let rt = current_thread();
    rt.block_on(async {
        let e = c.get(Bytes::from("k")).unwrap_err();
        assert!(matches!(e, ClientError::Refused(_)), "{e}");
        let e = blocking::Client::connect(&addr(&s), 1).unwrap_err();
        assert!(matches!(e, ClientError::Refused(_)), "{e}");
        drop(c);
    });
    // Outside, a new one works.
    let c = blocking::Client::connect(&addr(&s), 1).unwrap();
    assert_eq!(c.get(Bytes::from("k")).unwrap(), None);
}

/// A single-threaded runtime, as a small service embedding the client has.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A pooled connection the server closed is replaced, not reused out of step.
#[test]
fn a_broken_pooled_connection_is_replaced() {
    let s = Server::start(&["--proto-max-bulk-len", "4096"]);
    let rt = current_thread();
    rt.block_on(async {
        let c = Client::connect(&addr(&s), 1).await.unwrap();
        c.put(Bytes::from("k"), Bytes::from("v"), &PutOptions::default())
            .await
            .unwrap();
        // The server closes the only pooled connection after answering;
        // the client knows QUIT ends it and replaces it before the next call.
        c.command(vec![Bytes::from("QUIT")]).await.unwrap();
        assert_eq!(
            c.get(Bytes::from("k")).await.unwrap().as_deref(),
            Some(&b"v"[..])
        );
        // Closed by the server unannounced (a request past
        // proto-max-bulk-len: an error reply, then the close): the next
        // call may fail on the closed socket; within two calls the pool has
        // replaced it.
        let big = Bytes::from(vec![b'x'; 5000]);
        let e = c
            .command(vec![Bytes::from("SET"), Bytes::from("big"), big])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("Protocol error"), "{e}");
        let mut ok = false;
        for _ in 0..2 {
            if let Ok(v) = c.get(Bytes::from("k")).await {
                assert_eq!(v.as_deref(), Some(&b"v"[..]));
                ok = true;
                break;
            }
        }
        assert!(ok, "the pool never recovered");
        // And stays correct.
        assert_eq!(
            c.get(Bytes::from("k")).await.unwrap().as_deref(),
            Some(&b"v"[..])
        );
    });
}

/// Commands that would make a pooled connection answer out of turn are
/// refused before anything is sent; the pool keeps answering in step.
#[test]
fn commands_that_would_unsettle_a_pooled_connection_are_refused() {
    let s = Server::start(&[]);
    let rt = current_thread();
    rt.block_on(async {
        let c = Client::connect(&addr(&s), 1).await.unwrap();
        let cmd = |args: &[&str]| {
            args.iter()
                .map(|a| Bytes::from(a.to_string()))
                .collect::<Vec<_>>()
        };
        for refused in [
            cmd(&["SUBSCRIBE", "ch"]),
            cmd(&["psubscribe", "c*"]),
            cmd(&["UNSUBSCRIBE", "a", "b"]),
            cmd(&["MONITOR"]),
            cmd(&["HELLO", "3"]),
            cmd(&["client", "reply", "off"]),
            Vec::new(),
        ] {
            let e = c.command(refused.clone()).await.unwrap_err();
            assert!(matches!(e, ClientError::Refused(_)), "{refused:?}: {e}");
            // In a pipeline too, and nothing of the pipeline is sent.
            let e = c
                .pipeline_frames(&[cmd(&["SET", "sent", "1"]), refused.clone()])
                .await
                .unwrap_err();
            assert!(matches!(e, ClientError::Refused(_)), "{refused:?}: {e}");
        }
        assert_eq!(
            c.command(cmd(&["EXISTS", "sent"])).await.unwrap(),
            tidepool_client::Frame::Integer(0)
        );
        // What is allowed still answers in step on the one connection.
        c.command(cmd(&["HELLO", "2"])).await.unwrap();
        c.command(cmd(&["HELLO"])).await.unwrap();
        for i in 0..3 {
            let echo = c.command(cmd(&["ECHO", &format!("e{i}")])).await.unwrap();
            assert_eq!(
                echo,
                tidepool_client::Frame::BulkString(format!("e{i}").into())
            );
        }
        // A subscriber on a connection of its own gets what is published.
        let mut sub = s.redis();
        let mut pubsub = sub.as_pubsub();
        pubsub.subscribe("news").unwrap();
        assert_eq!(
            c.command(cmd(&["PUBLISH", "news", "hi"])).await.unwrap(),
            tidepool_client::Frame::Integer(1)
        );
        let msg: String = pubsub.get_message().unwrap().get_payload().unwrap();
        assert_eq!(msg, "hi");
    });
}
