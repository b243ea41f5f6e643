//! Network namespaces a test makes for itself: one per host, each joined
//! to one bridge by a veth link, with addresses of a private /24 the test
//! picks. The test's own (root) namespace joins the bridge too, as the
//! clients' host. Everything is deleted when the [`Network`] is dropped.

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs `ip` with `args`; the error names the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A bridge in a namespace of its own and the hosts joined to it.
pub struct Network {
    /// Namespace names and interface names made, to delete.
    tag: String,
    namespaces: Vec<String>,
    root_link: Option<String>,
    subnet: [u8; 3],
}

impl Network {
    /// Why this process cannot make namespaces, if it cannot (not root, no
    /// `ip`, or the kernel refuses).
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root".into());
        }
        let probe = format!("llprobe{}", std::process::id());
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                None
            }
            Err(e) => Some(e),
        }
    }

    /// A bridge and the root namespace's link to it, on a /24 of
    /// 10.213.0.0/16 chosen by the process id (host `.254` is the root
    /// namespace).
    pub fn new() -> Result<Self, String> {
        let pid = std::process::id();
        let mut net = Self {
            tag: format!("ll{}", pid % 100_000),
            namespaces: Vec::new(),
            root_link: None,
            subnet: [10, 213, (pid % 250) as u8 + 1],
        };
        net.remove_leftovers();
        let hub = net.namespace("hub")?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        // the root namespace's end stays here, the other joins the bridge
        let (here, there) = (format!("{}r0", net.tag), format!("{}r1", net.tag));
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there])?;
        net.root_link = Some(here.clone());
        ip(&["link", "set", &there, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &there, "master", "br0", "up"])?;
        let cidr = format!("{}/24", net.address(254));
        ip(&["addr", "add", &cidr, "dev", &here])?;
        ip(&["link", "set", &here, "up"])?;
        Ok(net)
    }

    /// Deletes what a killed run left on this subnet: the root end of its
    /// link (named `ll…r0`; its namespaces go with their names' reuse).
    fn remove_leftovers(&self) {
        let [a, b, c] = self.subnet;
        let Ok(out) = Command::new("ip")
            .args([
                "-o",
                "-4",
                "addr",
                "show",
                "to",
                &format!("{a}.{b}.{c}.0/24"),
            ])
            .output()
        else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().nth(1)
                && name.starts_with("ll")
                && name.ends_with("r0")
            {
                let _ = ip(&["link", "del", name]);
            }
        }
    }

    /// The address of host `n` (1–253) on the bridge.
    pub fn address(&self, n: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, n)
    }

    /// Makes host `n`: a namespace named after `role`, its loopback up and
    /// an `eth0` on the bridge with [`Self::address`]`(n)`; returns the
    /// namespace's name.
    pub fn host(&mut self, role: &str, n: u8) -> Result<String, String> {
        let ns = self.namespace(role)?;
        let hub = format!("{}-hub", self.tag);
        let (inside, outside) = (format!("{}h{n}a", self.tag), format!("{}h{n}b", self.tag));
        ip(&[
            "link", "add", &inside, "type", "veth", "peer", "name", &outside,
        ])?;
        ip(&["link", "set", &outside, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &outside, "master", "br0", "up"])?;
        ip(&["link", "set", &inside, "netns", &ns])?;
        ip(&["-n", &ns, "link", "set", &inside, "name", "eth0"])?;
        let cidr = format!("{}/24", self.address(n));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs `program` inside namespace `ns` (`ip netns
    /// exec` replaces itself with the program: the child is the program).
    pub fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    fn namespace(&mut self, role: &str) -> Result<String, String> {
        let ns = format!("{}-{role}", self.tag);
        // (a namespace left by a killed run of the same pid goes first)
        let _ = ip(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(link) = &self.root_link {
            let _ = ip(&["link", "del", link]);
        }
        // deleting a namespace deletes the veth ends in it, and their peers
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
