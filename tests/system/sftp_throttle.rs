//! The shipped nftables table (packaging/nftables/as2box.nft) in network namespaces that
//! the test creates, joined by veth pairs, with addresses from the documentation ranges
//! (192.0.2.0/24, 198.51.100.0/24) that exist only inside those namespaces. A TCP listener
//! in the server namespace stands for sshd (the table works below it). No traffic leaves
//! the namespaces.

use crate::common::sshd;

use std::process::{Child, Command, Stdio};

use sshd::text;

const NFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/nftables/as2box.nft");

struct Net {
    tag: String,
    listener: Option<Child>,
    port: u16,
    /// `ip`, `nft` and the listener are forked directly, and the limits are timed: keeps
    /// every other test out.
    _gate: crate::common::gate::Pass,
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

impl Net {
    fn ns(&self, n: &str) -> String {
        format!("a2b{}{n}", self.tag)
    }

    /// Server namespace `s` with clients `c1` (192.0.2.2) and `c2` (198.51.100.2); the
    /// table from `nft_text` loaded in `s`, and a listener on `port` holding connections.
    fn new(nft_text: &str) -> Net {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:04x}{n}", std::process::id() & 0xffff);
        let port = 9193;
        let mut net = Net {
            tag,
            listener: None,
            port,
            // The limits count connections per minute: a loaded machine would stretch the
            // burst over the refill, so nothing else runs meanwhile.
            _gate: crate::common::gate::enter_alone(crate::common::gate::Kind::DirectChildren),
        };
        let s = net.ns("s");
        for n in ["s", "c1", "c2"] {
            sh(&["ip", "netns", "add", &net.ns(n)]);
            sh(&["ip", "-n", &net.ns(n), "link", "set", "lo", "up"]);
        }
        for (c, srv_ip, cli_ip) in [
            ("c1", "192.0.2.1", "192.0.2.2"),
            ("c2", "198.51.100.1", "198.51.100.2"),
        ] {
            let (a, b) = (format!("{}{c}s", net.tag), format!("{}{c}c", net.tag));
            sh(&[
                "ip",
                "link",
                "add",
                &a,
                "netns",
                &s,
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &net.ns(c),
            ]);
            sh(&[
                "ip",
                "-n",
                &s,
                "addr",
                "add",
                &format!("{srv_ip}/24"),
                "dev",
                &a,
            ]);
            sh(&["ip", "-n", &s, "link", "set", &a, "up"]);
            sh(&[
                "ip",
                "-n",
                &net.ns(c),
                "addr",
                "add",
                &format!("{cli_ip}/24"),
                "dev",
                &b,
            ]);
            sh(&["ip", "-n", &net.ns(c), "link", "set", &b, "up"]);
        }
        let f = std::env::temp_dir().join(format!("as2box-{}.nft", net.tag));
        std::fs::write(&f, nft_text).unwrap();
        sh(&["ip", "netns", "exec", &s, "nft", "-f", f.to_str().unwrap()]);
        let _ = std::fs::remove_file(&f);
        let listener = Command::new("ip")
            .args(["netns", "exec", &s, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', {port})); s.listen(200)\nheld=[]\nwhile True:\n    c,_=s.accept(); held.append(c)\n"
            ))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        net.listener = Some(listener);
        // Wait for the listener from inside the server namespace.
        sshd::wait_for(10.0, "the listener", || {
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &s,
                    "ss",
                    "-Hltn",
                    &format!("sport = :{port}"),
                ])
                .output()
                .ok()?;
            (!o.stdout.is_empty()).then_some(())
        });
        net
    }

    /// Opens `n` connections from client namespace `c` to `ip`, holding them (`hold`) or
    /// closing each at once; returns how many were accepted (refusals are TCP resets).
    fn connect(&self, c: &str, ip: &str, n: usize, hold: bool) -> Vec<bool> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns(c), "python3", "-c"])
            .arg(format!(
                "import socket\nheld=[]\nr=[]\nfor i in range({n}):\n    try:\n        s=socket.create_connection(('{ip}', {port}), timeout=5)\n        r.append('1')\n        held.append(s) if {hold} else s.close()\n    except OSError:\n        r.append('0')\nprint(''.join(r))\n",
                port = self.port,
                hold = if hold { "True" } else { "False" },
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .chars()
            .map(|c| c == '1')
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
        for n in ["s", "c1", "c2"] {
            // Deleting a namespace deletes its veth ends (and so their peers).
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
    }
}

fn ready(test: &str) -> bool {
    if !sshd::ready(test) {
        return false;
    }
    for tool in ["/usr/sbin/nft", "/usr/sbin/ip", "/usr/bin/python3"] {
        if !std::path::Path::new(tool).exists() {
            panic!("AS2BOX_SYSTEM_TESTS is set but {test} cannot run: no {tool}");
        }
    }
    true
}

#[test]
fn twenty_first_new_connection_in_a_minute_is_refused_and_another_source_is_not() {
    if !ready("twenty_first_new_connection_in_a_minute_is_refused_and_another_source_is_not") {
        return;
    }
    let nft = std::fs::read_to_string(NFT).unwrap();
    let net = Net::new(&nft);
    let r = net.connect("c1", "192.0.2.1", 21, false);
    assert_eq!(r.len(), 21);
    assert!(
        r[..20].iter().all(|&ok| ok),
        "the first 20 (burst 20) pass: {r:?}"
    );
    assert!(
        !r[20],
        "the 21st new connection within the minute is refused: {r:?}"
    );
    let r2 = net.connect("c2", "198.51.100.1", 5, false);
    assert!(
        r2.iter().all(|&ok| ok),
        "another source is unaffected: {r2:?}"
    );
}

#[test]
fn twenty_first_concurrent_connection_is_refused() {
    if !ready("twenty_first_concurrent_connection_is_refused") {
        return;
    }
    // The shipped table with the rate limit lifted, so that only the concurrency rule can
    // refuse here.
    let nft = std::fs::read_to_string(NFT).unwrap();
    assert!(nft.contains("limit rate over 20/minute burst 20 packets"));
    let nft = nft.replace(
        "limit rate over 20/minute burst 20 packets",
        "limit rate over 1000/minute burst 1000 packets",
    );
    let net = Net::new(&nft);
    let r = net.connect("c1", "192.0.2.1", 21, true);
    assert!(
        r[..20].iter().all(|&ok| ok),
        "20 held connections pass: {r:?}"
    );
    assert!(!r[20], "the 21st concurrent connection is refused: {r:?}");
    let r2 = net.connect("c2", "198.51.100.1", 3, true);
    assert!(
        r2.iter().all(|&ok| ok),
        "another source is unaffected: {r2:?}"
    );
}
