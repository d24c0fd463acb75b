//! Any body as a Monte Carlo webhook before its signature is checked: the
//! Python-form encoding answers or refuses, in bounded work, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The encoder alone, without the API's dependencies.
#[allow(dead_code)]
#[path = "../../inbound/src/signature/python.rs"]
mod python;

fuzz_target!(|data: &[u8]| {
    let _ = python::python_form(data);
});
