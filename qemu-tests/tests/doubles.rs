//! The Kubernetes TEST DOUBLES on the host, no VM. No kubelet or control
//! plane binary can be had on these machines, so the images of the
//! TEST-ONLY k8s-test profile carry `fixtures/doubles/k8s-test-double`
//! instead; its "config accepted" in the VM scenarios is worth something
//! only if it refuses what the real Kubernetes 1.36 components refuse.
//! Each test renders a node's configuration with keel-bootstrap's own
//! steps (`keel_qemu_tests::doubles::NodeRoot`), runs the doubles on it
//! (the kubelet against Debian's containerd started with the rendered
//! containerd configuration) and expects acceptance; then applies one
//! fault at a time, each a start-up failure of the real component, and
//! expects a rejection naming it.
//!
//! Needs root (containerd), the Debian packages containerd,
//! containernetworking-plugins and openssl, and moto for the controller's
//! assets (scripts/setup).

use std::ffi::OsString;

use keel_bootstrap::node::{controller, kube, worker};
use keel_qemu_tests::doubles::{self, Containerd, Doubles, NodeRoot, Verdict, TOKEN};

/// Applies a fault to a rendered root and returns the flags to add.
type ApplyFault = dyn Fn(&NodeRoot) -> Vec<String>;

/// One fault: what it is, how to apply it to a freshly rendered root (it
/// returns flags to add), and what the rejection must say.
struct Fault {
    what: &'static str,
    apply: Box<ApplyFault>,
    expect: &'static str,
}

fn fault(
    what: &'static str,
    expect: &'static str,
    apply: impl Fn(&NodeRoot) -> Vec<String> + 'static,
) -> Fault {
    Fault { what, apply: Box::new(apply), expect }
}

/// A network a CNI DaemonSet would install into containerd's conf_dir.
const OTHER_CNI: &str = "etc/cni/net.d/05-other.conflist";

fn flags(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Edits the JSON document `rel` (the kubelet's configuration, a
/// kubeconfig) in place.
fn edit_json(root: &NodeRoot, rel: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut doc: serde_json::Value = serde_json::from_str(&root.read(rel).unwrap()).unwrap();
    edit(&mut doc);
    root.write(rel, serde_json::to_string_pretty(&doc).unwrap().as_bytes()).unwrap();
}

fn remove(root: &NodeRoot, rel: &str) {
    std::fs::remove_file(root.path(rel)).unwrap();
}

/// The flags keel-bootstrap wrote for `component`, as its unit passes them.
fn rendered_args(root: &NodeRoot, component: &str) -> Vec<String> {
    root.exec_args(component).unwrap()
}

fn run(doubles: &Doubles, root: &NodeRoot, component: &str, extra: Vec<String>) -> Verdict {
    let mut args = rendered_args(root, component);
    args.extend(extra);
    let env: Vec<(&str, OsString)> =
        if component == "kubelet" { root.kubelet_env() } else { vec![] };
    doubles.run(component, &args, &env).unwrap()
}

fn expect_accepted<'a>(v: &'a Verdict, component: &str) -> &'a str {
    v.accepted().unwrap_or_else(|| {
        panic!(
            "the {component} test double refused what keel-bootstrap rendered ({}):\n{}",
            v.status, v.stderr
        )
    })
}

/// Applies each fault to a freshly rendered root and checks the rejection.
fn expect_rejections(doubles: &Doubles, root: &NodeRoot, component: &str, faults: Vec<Fault>) {
    let mut wrong = Vec::new();
    for f in faults {
        root.render().unwrap();
        let extra = (f.apply)(root);
        let v = run(doubles, root, component, extra);
        match v.rejected() {
            Some(why) if why.contains(f.expect) => {}
            _ => wrong.push(format!(
                "{}: expected a rejection containing {:?}, got ({}):\n{}",
                f.what, f.expect, v.status, v.stderr
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "the {component} test double let these through or gave another reason:\n\n{}",
        wrong.join("\n\n")
    );
}

#[test]
fn the_test_profile_installs_this_double_under_each_name() {
    let profile =
        std::fs::read_to_string(keel_qemu_tests::images::fixtures().join("profiles/ci.toml"))
            .unwrap();
    let digest = std::process::Command::new("sha256sum").arg(doubles::path()).output().unwrap();
    let digest = String::from_utf8(digest.stdout).unwrap();
    let digest = digest.split_whitespace().next().unwrap();
    for name in doubles::NAMES {
        let table = profile
            .split(&format!("[components.{name}]\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no [components.{name}]"));
        let table = table.split("\n[").next().unwrap();
        assert!(
            table.contains(&format!("url = \"https://keel.test/doubles/{}\"", doubles::DOUBLE)),
            "{name}: {table}"
        );
        assert!(
            table.contains(&format!("sha256 = \"{digest}\"")),
            "{name}: the profile pins another digest than {}'s ({digest}): update the four sha256 lines\n{table}",
            doubles::DOUBLE
        );
        assert!(table.contains(&format!("path = \"/usr/bin/{name}\"")), "{name}: {table}");
    }
}

#[test]
fn kubelet_double_accepts_a_workers_configuration_and_rejects_what_kubelet_refuses() {
    let root = NodeRoot::worker().unwrap();
    let _containerd = Containerd::start(&root, None).unwrap();
    let doubles = Doubles::new().unwrap();

    let v = run(&doubles, &root, "kubelet", vec![]);
    let summary = expect_accepted(&v, "kubelet");
    let template = root.path(worker::CNI_TEMPLATE);
    for part in [
        "node ip-10-0-1-5.eu-central-1.compute.internal (10.0.1.5), taints none,".to_string(),
        format!("at unix://{} with CRI plugin ok", root.path(kube::CONTAINERD_SOCKET).display()),
        format!(
            "CNI network keel (host-local bridge portmap) from containerd's template {} with the Node's spec.podCIDR",
            template.display()
        ),
        "request a client certificate for node ip-10-0-1-5.eu-central-1.compute.internal from https://api.dbl.internal:6443".to_string(),
        // The image's sysctl.d file gives what the kubelet needs, and it
        // is told to refuse otherwise.
        "kernel defaults protected and as kubelet needs them".to_string(),
        "pod network: ip_forward 1, bridge-nf-call-iptables 1, inotify max_user_instances 8192".to_string(),
    ] {
        assert!(summary.contains(&part), "{part:?} not in {summary:?}");
    }
    // Not told to protect them, kubelet changes what differs.
    root.write("proc/sys/kernel/panic", b"0\n").unwrap();
    edit_json(&root, kube::KUBELET_CONFIG, |d| d["protectKernelDefaults"] = false.into());
    let v = run(&doubles, &root, "kubelet", vec![]);
    let summary = expect_accepted(&v, "kubelet");
    assert!(
        summary.contains("kernel defaults not protected; kubelet would set kernel/panic"),
        "{summary}"
    );
    root.render().unwrap();

    // A deprecated flag warns, as kubelet does, and is accepted.
    let v = run(&doubles, &root, "kubelet", flags(&["--max-pods=20"]));
    expect_accepted(&v, "kubelet");
    assert!(v.stderr.contains("flag --max-pods has been deprecated"), "{}", v.stderr);
    // A network a CNI DaemonSet installed takes the template's place.
    root.write(
        OTHER_CNI,
        root.read(worker::CNI_TEMPLATE)
            .unwrap()
            .replace("{{.PodCIDR}}", "10.244.7.0/24")
            .as_bytes(),
    )
    .unwrap();
    let v = run(&doubles, &root, "kubelet", vec![]);
    let summary = expect_accepted(&v, "kubelet");
    assert!(summary.contains(&format!("from {}", root.path(OTHER_CNI).display())), "{summary}");
    // Without a template and without a network, the node waits for one.
    root.render().unwrap();
    root.replace(worker::CONTAINERD_CONFIG, "conf_template", "# conf_template").unwrap();
    let v = run(&doubles, &root, "kubelet", vec![]);
    assert!(expect_accepted(&v, "kubelet").contains("no CNI network in"), "{}", v.stderr);

    let cfg = kube::KUBELET_CONFIG;
    let boot = worker::BOOTSTRAP_KUBECONFIG;
    let faults = vec![
        fault("an unknown flag", "unknown flag: --kubelet-config", |_| flags(&["--kubelet-config=/etc/kubelet.json"])),
        fault("a flag removed in 1.27", "unknown flag: --container-runtime (removed", |_| flags(&["--container-runtime=remote"])),
        fault("a flag removed before 1.36 (the runtime picks the pause image)", "unknown flag: --pod-infra-container-image (removed", |_| flags(&["--pod-infra-container-image=pause:3.10"])),
        fault("a flag without its value", "flag needs an argument: --node-ip", |_| flags(&["--node-ip"])),
        fault("a number flag with a word", "invalid argument \"lots\" for \"--max-pods\" flag", |_| flags(&["--max-pods=lots"])),
        fault("a positional argument", "unknown command \"start\"", |_| flags(&["start"])),
        fault("another API version", "no kind \"KubeletConfiguration\" is registered for version \"kubelet.config.k8s.io/v1\"", |r| {
            edit_json(r, cfg, |d| d["apiVersion"] = "kubelet.config.k8s.io/v1".into());
            vec![]
        }),
        fault("no kind", "Object 'Kind' is missing", |r| {
            edit_json(r, cfg, |d| {
                d.as_object_mut().unwrap().remove("kind");
            });
            vec![]
        }),
        fault("a string where an int32 goes", "field .maxPods: int32 expected, got string 110", |r| {
            edit_json(r, cfg, |d| d["maxPods"] = "110".into());
            vec![]
        }),
        fault("a bad duration", "field .syncFrequency: duration expected", |r| {
            edit_json(r, cfg, |d| d["syncFrequency"] = "1 minute".into());
            vec![]
        }),
        fault("a misspelt field", "unknown field .cgroupsDriver", |r| {
            edit_json(r, cfg, |d| {
                let o = d.as_object_mut().unwrap();
                let v = o.remove("cgroupDriver").unwrap();
                o.insert("cgroupsDriver".into(), v);
            });
            vec![]
        }),
        fault("a trailing comma", "not valid JSON (expected a quoted key", |r| {
            let text = r.read(cfg).unwrap();
            let body = text.trim_end().strip_suffix('}').unwrap().trim_end();
            r.write(cfg, format!("{body},\n}}\n").as_bytes()).unwrap();
            vec![]
        }),
        fault("an unknown cgroup driver", "cgroupDriver \"systemd-cgroup\"", |r| {
            edit_json(r, cfg, |d| d["cgroupDriver"] = "systemd-cgroup".into());
            vec![]
        }),
        fault("a cluster DNS that is not an IP", "clusterDNS (10.96.0.300) must be a valid IP address", |r| {
            edit_json(r, cfg, |d| d["clusterDNS"] = serde_json::json!(["10.96.0.300"]));
            vec![]
        }),
        fault("no client CA file", "unable to load client CA file (authentication.x509.clientCAFile)", |r| {
            remove(r, kube::CA_CRT);
            vec![]
        }),
        fault("a client CA that is no certificate", "no PEM certificate in it", |r| {
            r.write(kube::CA_CRT, b"not a certificate\n").unwrap();
            vec![]
        }),
        fault("a malformed bootstrap token", "the token is not a bootstrap token", |r| {
            r.replace(boot, TOKEN, "abcdef.0123456789ABCDEF").unwrap();
            vec![]
        }),
        fault("a current context that is not defined", "context \"elsewhere\" not found", |r| {
            edit_json(r, boot, |d| d["current-context"] = "elsewhere".into());
            vec![]
        }),
        fault("an API server over plain http", "is not an https URL", |r| {
            edit_json(r, boot, |d| d["clusters"][0]["cluster"]["server"] = "http://api.dbl.internal:8080".into());
            vec![]
        }),
        fault("no bootstrap kubeconfig and no kubeconfig", "bootstrap kubeconfig", |r| {
            remove(r, boot);
            vec![]
        }),
        fault("a node label in the kubernetes.io namespace", "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: [node-role.kubernetes.io/worker]", |_| {
            flags(&["--node-labels=node-role.kubernetes.io/worker="])
        }),
        fault("a node IP that is no IP", "failed to parse node IP \"10.0.1.300\"", |_| flags(&["--node-ip=10.0.1.300"])),
        fault("a node name with underscores", "is not a lowercase RFC 1123 subdomain", |_| flags(&["--hostname-override=ip_10_0_1_5"])),
        fault("no runtime at the endpoint", "no such file or directory (is containerd running?)", |r| {
            let sock = r.path("run/elsewhere/containerd.sock");
            edit_json(r, cfg, |d| d["containerRuntimeEndpoint"] = format!("unix://{}", sock.display()).into());
            vec![]
        }),
        fault("a kernel setting the kubelet needs, changed", "invalid kernel flag: vm/overcommit_memory, expected value: 1, actual value: 0", |r| {
            r.write("proc/sys/vm/overcommit_memory", b"0\n").unwrap();
            vec![]
        }),
        fault("a kernel setting the kubelet needs, missing", "kernel/keys/root_maxbytes: no such file or directory", |r| {
            remove(r, "proc/sys/kernel/keys/root_maxbytes");
            vec![]
        }),
        fault("a TCP runtime endpoint", "only unix:// endpoints are supported on Linux", |r| {
            edit_json(r, cfg, |d| d["containerRuntimeEndpoint"] = "tcp://127.0.0.1:1234".into());
            vec![]
        }),
        fault("a CNI network list that does not parse", "not valid JSON", |r| {
            r.write(OTHER_CNI, b"{\"cniVersion\": \"1.0.0\", \"name\": \"keel\", \"plugins\": [}\n").unwrap();
            vec![]
        }),
        fault("a CNI template that does not parse", "conf_template", |r| {
            r.replace(worker::CNI_TEMPLATE, "\"plugins\": [", "\"plugins\": [}").unwrap();
            vec![]
        }),
        fault("a CNI plugin that is not installed", "plugin \"flannel\" not found in /usr/lib/cni", |r| {
            r.replace(worker::CNI_TEMPLATE, "\"type\": \"bridge\"", "\"type\": \"flannel\"").unwrap();
            vec![]
        }),
        // Issue 16: a range chosen on the node collides with another's.
        fault("a CNI template with a fixed pod range", "does not use {{.PodCIDR}}", |r| {
            r.replace(worker::CNI_TEMPLATE, "{{.PodCIDR}}", "10.244.17.0/24").unwrap();
            vec![]
        }),
    ];
    expect_rejections(&doubles, &root, "kubelet", faults);
}

#[test]
fn kubelet_double_rejects_a_containerd_without_its_cri_plugin() {
    let root = NodeRoot::worker().unwrap();
    let rendered = root.read(worker::CONTAINERD_CONFIG).unwrap();
    assert!(rendered.contains("version = 2\n"), "{rendered}");
    let no_cri = rendered.replacen(
        "version = 2\n",
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        1,
    );
    root.write("etc/containerd/no-cri.toml", no_cri.as_bytes()).unwrap();
    let _containerd =
        Containerd::start(&root, Some(&root.path("etc/containerd/no-cri.toml"))).unwrap();
    let doubles = Doubles::new().unwrap();
    let v = run(&doubles, &root, "kubelet", vec![]);
    let why =
        v.rejected().unwrap_or_else(|| panic!("accepted a containerd without CRI:\n{}", v.stderr));
    assert!(why.contains("containerd has no CRI plugin loaded"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_doubles_accept_a_controllers_configuration_and_reject_bad_flags() {
    let root = NodeRoot::controller().await.unwrap();
    let doubles = Doubles::new().unwrap();
    for component in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        let v = run(&doubles, &root, component, vec![]);
        expect_accepted(&v, component);
    }
    {
        let _containerd = Containerd::start(&root, None).unwrap();
        let v = run(&doubles, &root, "kubelet", vec![]);
        let summary = expect_accepted(&v, "kubelet");
        assert!(summary.contains("register node ip-10-0-1-10.eu-central-1.compute.internal with https://127.0.0.1:6443 (client certificate"), "{summary}");
        // Issue 16: controllers register tainted, so ordinary pods stay
        // off the nodes that hold the CA and service-account keys.
        assert!(
            summary.contains("taints node-role.kubernetes.io/control-plane:NoSchedule,"),
            "{summary}"
        );
        expect_rejections(
            &doubles,
            &root,
            "kubelet",
            vec![
                fault("no kubeconfig", "invalid kubeconfig: stat", |r| {
                    remove(r, controller::KUBELET_KUBECONFIG);
                    vec![]
                }),
                fault("a taint effect kubelet does not know", "effect \"NoSchedul\"", |r| {
                    edit_json(r, kube::KUBELET_CONFIG, |c| {
                        c["registerWithTaints"][0]["effect"] = "NoSchedul".into()
                    });
                    vec![]
                }),
                fault("a taint key with a space", "registerWithTaints: key", |r| {
                    edit_json(r, kube::KUBELET_CONFIG, |c| {
                        c["registerWithTaints"][0]["key"] = "a b".into()
                    });
                    vec![]
                }),
                fault(
                    "a taint as a string",
                    "field .registerWithTaints[0]: object expected",
                    |r| {
                        edit_json(r, kube::KUBELET_CONFIG, |c| {
                            c["registerWithTaints"][0] = "x:NoSchedule".into()
                        });
                        vec![]
                    },
                ),
            ],
        );
    }

    let pki = |name: &str, ext: &str| controller::pki_path(name, ext);
    expect_rejections(
        &doubles,
        &root,
        "kube-apiserver",
        vec![
            fault("a flag removed in 1.24", "unknown flag: --insecure-port (removed", |_| {
                flags(&["--insecure-port=8080"])
            }),
            fault("a serving key of another certificate", "does not match certificate", move |r| {
                let other = r.read(&pki("scheduler", "key")).unwrap();
                r.write(&pki("apiserver", "key"), other.as_bytes()).unwrap();
                vec![]
            }),
            fault("a service range larger than /12", "the mask must be >= 12", |_| {
                flags(&["--service-cluster-ip-range=10.0.0.0/8"])
            }),
            fault("an unknown admission plugin", "plugin \"NodeRestrictions\" is unknown", |_| {
                flags(&["--enable-admission-plugins=NodeRestrictions"])
            }),
            fault(
                "an unknown authorization mode",
                "authorization-mode \"Nodes\" is not a valid mode",
                |_| flags(&["--authorization-mode=Nodes,RBAC"]),
            ),
            fault("no service account issuer", "service-account-issuer is a required flag", |_| {
                flags(&["--service-account-issuer="])
            }),
            fault("no etcd-servers", "--etcd-servers must be specified", |_| {
                flags(&["--etcd-servers="])
            }),
            fault("a missing etcd client key", "no such file", move |r| {
                remove(r, &pki("apiserver-etcd-client", "key"));
                vec![]
            }),
        ],
    );
    expect_rejections(
        &doubles,
        &root,
        "kube-controller-manager",
        vec![
            fault(
                "an unknown controller",
                "\"nodeipamm\" is not in the list of known controllers",
                |_| flags(&["--controllers=*,bootstrapsigner,nodeipamm"]),
            ),
            fault("a client certificate of another CA", "does not verify against", move |r| {
                for ext in ["crt", "key"] {
                    let other = r.read(&pki("front-proxy-client", ext)).unwrap();
                    r.write(&pki("controller-manager", ext), other.as_bytes()).unwrap();
                }
                vec![]
            }),
            fault(
                "a cluster CIDR smaller than a node's",
                "is not larger than the node CIDR mask /24",
                |_| flags(&["--cluster-cidr=10.244.0.0/24"]),
            ),
        ],
    );
    expect_rejections(
        &doubles,
        &root,
        "kube-scheduler",
        vec![
            fault("a flag removed in 1.23", "unknown flag: --policy-config-file (removed", |_| {
                flags(&["--policy-config-file=/etc/policy.json"])
            }),
            fault("a kubeconfig without its client key", "no such file", move |r| {
                remove(r, &pki("scheduler", "key"));
                vec![]
            }),
        ],
    );
}
