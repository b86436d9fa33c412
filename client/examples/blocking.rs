//! The blocking client, for a caller without an async runtime: put a block,
//! read it, see where it lives, delete it.
//!
//!     cargo run --example blocking -p tidepool-client -- 127.0.0.1:6379

use tidepool_client::blocking::Client;
use tidepool_client::{Bytes, ClientError, PutOptions};

fn main() -> Result<(), ClientError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6379".into());
    let client = Client::connect(&addr, 2)?;
    let key = Bytes::from_static(b"example-block");
    client.put(
        key.clone(),
        Bytes::from(vec![42u8; 4096]),
        &PutOptions::default(),
    )?;
    let got = client.get(key.clone())?.expect("just stored");
    assert_eq!(got.len(), 4096);
    let tiers = client.exists(std::slice::from_ref(&key))?;
    println!("stored 4096 bytes; tier {:?}", tiers[0]);
    assert_eq!(client.delete(std::slice::from_ref(&key))?, 1);
    assert_eq!(client.get(key)?, None);
    println!("deleted");
    Ok(())
}
