//! The VM network: needs root (network namespaces, veth, bridges).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use keel_qemu_tests::net::{Network, METADATA_ADDR};

#[test]
fn host_reaches_a_server_bound_in_the_namespace_and_everything_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let netns;
    {
        let net = Network::create(dir.path()).expect("creating the VM network (needs root)");
        netns = net.netns().to_string();
        assert!(std::path::Path::new(&format!("/run/netns/{netns}")).exists());

        // A server bound in the namespace on the gateway address answers a
        // client in the host namespace through the veth pair.
        let listener = net.bind_tcp(SocketAddr::new(net.gateway().into(), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            s.write_all(peer.ip().to_string().as_bytes()).unwrap();
        });
        let mut c = TcpStream::connect(addr).expect("host reaches the namespace");
        let mut peer = String::new();
        c.read_to_string(&mut peer).unwrap();
        server.join().unwrap();
        assert_eq!(peer, net.host_ip().to_string(), "the host side talks from its veth address");

        // The metadata address is local inside the namespace only.
        let md = net.bind_tcp(SocketAddr::new(METADATA_ADDR.into(), 0)).unwrap();
        assert_eq!(md.local_addr().unwrap().ip(), METADATA_ADDR);
        let out = net.command("ip").args(["-4", "addr", "show", "br0"]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("169.254.169.254/32"));

        let tap = {
            let mut net = net;
            let tap = net.add_tap().unwrap();
            let out = net.command("ip").args(["link", "show", &tap]).output().unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).contains("master br0"));
            tap
        };
        assert_eq!(tap, "tap0");
    }
    assert!(
        !std::path::Path::new(&format!("/run/netns/{netns}")).exists(),
        "namespace {netns} left behind"
    );
}
