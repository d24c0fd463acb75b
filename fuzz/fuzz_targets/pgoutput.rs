//! Any bytes as a pgoutput message: an error, never a panic or a huge
//! allocation; a tuple that decodes can be walked to its end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lily_cdc::pgoutput::{LogicalMessage, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(data) {
        match message {
            LogicalMessage::Insert { new, .. } => {
                let _ = new.values().count();
            }
            LogicalMessage::Update { old, new, .. } => {
                if let Some(old) = old {
                    let _ = old.values().count();
                }
                let _ = new.values().count();
            }
            LogicalMessage::Delete { old, .. } => {
                let _ = old.values().count();
            }
            _ => {}
        }
    }
});
