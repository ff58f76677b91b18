//! `<ref>` parsing (SPEC 2): any string a tenant writes in an annotation.
//! A reference that parses prints back to one that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sm_injector::reference;

fuzz_target!(|s: &str| {
    if let Ok(r) = reference::parse(s) {
        let printed = r.to_string();
        let again = reference::parse(&printed).expect("a printed reference parses");
        assert_eq!(again, r);
    }
    let _ = reference::parse_list(s);
});
