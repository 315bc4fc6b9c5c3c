//! WebSocket through the gateway: a real client (tokio-tungstenite) and a real echo server on
//! the agent's side, over plain HTTP and over HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod support;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{WebSocketStream, client_async};

use common::{ALICE, DOMAIN, Harness, REQUEST_TIMEOUT};
use support::{enable_tls, tls_connect, websocket_echo};

#[test]
fn websocket_messages_echo_both_ways_and_the_close_is_answered() {
    let h = Harness::start("ws-echo");
    let echo = websocket_echo();
    let host = format!("{}--main--ws--alice.{DOMAIN}", echo.port);
    let done = h.rt.as_ref().unwrap().block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let stream = tokio::net::TcpStream::connect(h.gateway).await.unwrap();
            let (ws, response) = client_async(request("ws", &host), stream).await.unwrap();
            assert_eq!(response.status(), 101);
            exchange(ws).await
        })
        .await
    });
    assert_eq!(done.expect("the exchange timed out"), 23);
}

#[test]
fn websocket_works_behind_an_https_gateway() {
    let mut h = Harness::start("ws-tls");
    let tls = enable_tls(&mut h);
    let echo = websocket_echo();
    let host = format!("{}--main--ws--alice.{DOMAIN}", echo.port);
    let done = h.rt.as_ref().unwrap().block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let stream = tls_connect(h.gateway, &tls, &host).await.unwrap();
            let (ws, response) = client_async(request("wss", &host), stream).await.unwrap();
            assert_eq!(response.status(), 101);
            exchange(ws).await
        })
        .await
    });
    assert_eq!(done.expect("the exchange timed out"), 23);
}

#[test]
fn websocket_upgrade_without_access_is_refused_before_the_app() {
    let h = Harness::start("ws-denied");
    let echo = websocket_echo();
    let host = format!("{}--main--ws--alice.{DOMAIN}", echo.port);
    let result = h.rt.as_ref().unwrap().block_on(async {
        let stream = tokio::net::TcpStream::connect(h.gateway).await.unwrap();
        let mut req = request("ws", &host);
        req.headers_mut().remove("authorization");
        tokio::time::timeout(REQUEST_TIMEOUT, client_async(req, stream)).await
    });
    match result.expect("the handshake timed out") {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 302);
        }
        other => panic!("expected the sign-in redirect, got {other:?}"),
    }
}

// The upgrade request for an app host, signed in as alice by token.
fn request(scheme: &str, host: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{scheme}://{host}/ws")
        .into_client_request()
        .unwrap();
    let auth = HeaderValue::from_str(&format!("Bearer {ALICE}")).unwrap();
    req.headers_mut().insert("authorization", auth);
    req
}

// Sends messages one by one (text, binary, a 1 MiB binary), then a burst, each echoed back
// unchanged, then closes and waits for the server's close reply. Returns the messages echoed.
async fn exchange<S>(mut ws: WebSocketStream<S>) -> usize
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let big: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(7) % 251) as u8)
        .collect();
    let one_by_one = vec![
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big),
        Message::text("ünïcödé ✓"),
        Message::text(""),
    ];
    let mut echoed = 0;
    for message in one_by_one {
        ws.send(message.clone()).await.unwrap();
        let back = ws.next().await.expect("the stream ended").unwrap();
        assert!(back == message, "message {echoed} came back different");
        echoed += 1;
    }

    // A burst in flight at once comes back in order.
    let burst: Vec<Message> = (0..18)
        .map(|i| Message::text(format!("burst {i}")))
        .collect();
    for message in &burst {
        ws.send(message.clone()).await.unwrap();
    }
    for message in burst {
        let back = ws.next().await.expect("the stream ended").unwrap();
        assert_eq!(back, message);
        echoed += 1;
    }

    // Our close is answered by the server's, through the gateway.
    ws.close(None).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("expected the server's close reply, got {other:?}"),
    }
    echoed
}
