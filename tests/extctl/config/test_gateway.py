"""Envoy Gateway resources generated from a Processor: valid against EG v1.9's CRD schemas,
and the CEL rules a schema cannot express refused by the generator."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import wasmtime
import yaml

from extctl.config import (
    ConfigError,
    Deployment,
    FilterPosition,
    GatewayError,
    GatewayOptions,
    Policy,
    SessionPersistence,
    Target,
    WasmModule,
)
from extctl.config.gateway import processing_mode as _processing_mode
from extctl.config.gateway import to_yaml
from tests.helpers.common import gen
from tests.helpers.gateway import _config, _valid, resources
from tests.helpers.procs import (
    BufferedJson,
    FullDuplexRedact,
    HeadersOnly,
    Metadata,
    ModeOverride,
    Rewrite,
)


def processing_mode(cls) -> dict:
    return _processing_mode(cls.filter_spec())


@pytest.mark.parametrize("processor", [HeadersOnly, Rewrite, BufferedJson, FullDuplexRedact,
                                       Metadata, ModeOverride])
def test_generated_resources_validate_against_the_crds(processor):
    """What is written (gateway.yaml, notes and all) parses to the documents generated, and
    each is one the API server accepts as it is."""
    deployment = _config(processor)
    generated = resources(deployment)
    for text in (deployment.render()["gateway.yaml"], to_yaml(generated)):
        docs = list(yaml.safe_load_all(text))
        assert [d["kind"] for d in docs] == ["EnvoyExtensionPolicy", "Backend"]
        for doc in docs:
            _valid(doc)
        assert docs == generated


def test_processing_mode_follows_the_class():
    assert processing_mode(HeadersOnly) == {"request": {}}
    assert processing_mode(Rewrite) == {"request": {}, "response": {}}
    assert processing_mode(BufferedJson) == {"request": {"body": "Buffered"}}
    assert processing_mode(FullDuplexRedact) == {"request": {"body": "FullDuplexStreamed"},
                                                 "response": {"body": "FullDuplexStreamed"}}
    assert processing_mode(Metadata)["request"]["attributes"] == ["request.path",
                                                                  "request.method"]
    assert processing_mode(ModeOverride)["allowModeOverride"] is True


def test_what_envoy_gateway_cannot_ask_for_is_refused_not_dropped():
    import extproc

    class Trailers(extproc.Processor):
        async def on_request_trailers(self, trailers):
            pass

    class Nothing(extproc.Processor):
        pass

    with pytest.raises(GatewayError, match="request_trailers, which Envoy Gateway"):
        processing_mode(Trailers)
    with pytest.raises(GatewayError, match="handles no phase"):
        processing_mode(Nothing)
    from tests.helpers.procs import RoutingAllowed

    assert RoutingAllowed.allow_routing_mutations
    with pytest.raises(GatewayError, match="cannot express"):
        processing_mode(RoutingAllowed)
    policy = resources(_config(Metadata))[0]
    assert policy["spec"]["extProc"][0]["metadata"] == {"writableNamespaces": ["extkit"]}
    _valid(policy)


def test_backend_lists_every_worker_socket_and_tcp_endpoints():
    import extproc

    sockets = extproc.ServerConfig(uds="/var/run/extproc/extproc.sock", workers=2).addresses()
    docs = resources(_config(HeadersOnly, addresses=sockets))
    assert docs[1]["spec"]["endpoints"] == [{"unix": {"path": p}} for p in sockets]
    _valid(docs[1])
    tcp = resources(_config(HeadersOnly, addresses=["10.0.0.7:9000", "10.0.0.8:9000"]))
    assert tcp[1]["spec"]["endpoints"] == [{"ip": {"address": "10.0.0.7", "port": 9000}},
                                           {"ip": {"address": "10.0.0.8", "port": 9000}}]
    _valid(tcp[1])
    named = resources(_config(HeadersOnly, addresses=["extproc.apps.svc:9000"]))
    assert named[1]["spec"]["endpoints"] == [{"fqdn": {"hostname": "extproc.apps.svc",
                                                       "port": 9000}}]
    _valid(named[1])
    with pytest.raises(GatewayError, match="cannot mix host names"):
        resources(_config(HeadersOnly, addresses=["10.0.0.7:9000", "extproc.apps.svc:9000"]))


def test_backend_tls_to_a_tcp_processor_validates():
    docs = resources(_config(HeadersOnly, addresses=["extproc.apps.svc:9443"],
                             tls_ca_configmap="extproc-ca", tls_client_secret="envoy-client",
                             tls_sni="extproc.apps.svc"))
    for doc in docs:
        _valid(doc)
    assert docs[1]["spec"]["endpoints"] == [{"fqdn": {"hostname": "extproc.apps.svc",
                                                      "port": 9443}}]
    assert docs[1]["spec"]["tls"] == {
        "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "extproc-ca"}],
        "clientCertificateRef": {"group": "", "kind": "Secret", "name": "envoy-client"},
        "sni": "extproc.apps.svc"}
    system = resources(_config(HeadersOnly, addresses=["10.0.0.5:9443"], tls_sni="x.example"))
    _valid(system[1])
    assert system[1]["spec"]["tls"]["wellKnownCACertificates"] == "System"
    with pytest.raises(GatewayError, match="not Unix sockets"):
        resources(_config(HeadersOnly, tls_ca_configmap="ca"))


def test_wasm_entries_image_and_http_validate():
    digest = "a" * 64
    docs = resources(Deployment(wasm=[
        WasmModule("redact", image="oci://registry.example.com/filters/redact:v1",
                   sha256=f"sha256:{digest}", pull_secret="regcred", config={"k": "v"}),
        WasmModule("tag", url="https://example.com/tag.wasm", sha256=digest,
                   pull_policy="Always", root_id="tag"),
    ], gateway=GatewayOptions(name="filters", targets=[Target("Gateway", "eg")])))
    assert len(docs) == 1
    _valid(docs[0])
    image = docs[0]["spec"]["wasm"][0]["code"]["image"]
    assert image == {"url": "registry.example.com/filters/redact:v1", "sha256": digest,
                     "pullSecretRef": {"name": "regcred"}}


def test_schema_check_catches_a_broken_resource():
    """The validation is real: a resource with a wrong field type fails it."""
    doc = resources(_config(BufferedJson))[0]
    doc["spec"]["extProc"][0]["processingMode"]["request"]["body"] = "Chunked"
    with pytest.raises(jsonschema.ValidationError):
        _valid(doc)


def test_cel_rules_are_refused_by_the_generator():
    with pytest.raises(GatewayError, match="failOpen cannot be true with FullDuplexStreamed"):
        resources(_config(FullDuplexRedact, fail_open=True))
    with pytest.raises(GatewayError, match="needs a target"):
        resources(_config(HeadersOnly, targets=[]))
    with pytest.raises(ConfigError, match="target kind"):
        Target("Service", "x")
    with pytest.raises(GatewayError, match="longer than 107 bytes"):
        resources(_config(HeadersOnly, addresses=["/" + "s" * 120]))
    with pytest.raises(ConfigError, match="give a file, an image or a URL"):
        WasmModule("w")
    with pytest.raises(ConfigError, match="sha256 must be"):
        WasmModule("w", image="oci://r/x:1", sha256="xyz")


def test_gen_gateway_and_envoy_from_the_cli(tmp_path):
    import json
    import subprocess

    from click.testing import CliRunner

    from extctl.cli import cli
    from extctl.testing import find_envoy

    out = tmp_path / "eg.yaml"
    result = CliRunner().invoke(cli, [
        "gen", "gateway", "tests.helpers.procs:BufferedJson", "--name", "json", "--namespace",
        "apps",
        "--route", "orders", "--uds", "/var/run/extproc/x.sock", "--workers", "2",
        "--wasm-image", f"tag=oci://registry.example.com/f/tag:v1@sha256:{'b' * 64}",
        "-o", str(out)])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    for doc in docs:
        _valid(doc)
    assert docs[0]["spec"]["extProc"][0]["processingMode"] == {"request": {"body": "Buffered"}}
    assert docs[0]["spec"]["wasm"][0]["code"]["image"]["sha256"] == "b" * 64
    assert [e["unix"]["path"] for e in docs[1]["spec"]["endpoints"]] == [
        "/var/run/extproc/x-0.sock", "/var/run/extproc/x-1.sock"]
    # a Backend is served only with enableBackend: the file says so at the top, and the
    # patch to merge is beside it
    head = [line for line in out.read_text().splitlines() if line.startswith("#")]
    assert any("extensionApis.enableBackend" in line for line in head), head
    assert (tmp_path / "envoy-gateway-config.patch.yaml").exists()
    wasm_only = CliRunner().invoke(cli, [
        "gen", "gateway", "--name", "w", "--route", "r",
        "--wasm-image", f"tag=oci://registry.example.com/f/tag:v1@sha256:{'b' * 64}"])
    assert "enableBackend" not in wasm_only.output  # no Backend, nothing to enable
    refused = CliRunner().invoke(cli, ["gen", "gateway", "tests.helpers.procs:FullDuplexRedact",
                                       "--name",
                                       "fd", "--route", "r", "--uds", "/x.sock", "--fail-open"])
    assert refused.exit_code == 2 and "FullDuplexStreamed" in refused.output
    envoy_file = tmp_path / "envoy.yaml"
    made = CliRunner().invoke(cli, ["gen", "envoy", "tests.helpers.procs:Rewrite", "--uds",
                                    "/tmp/x.sock",
                                    "--upstream", "127.0.0.1:8080", "-o", str(envoy_file)])
    assert made.exit_code == 0, made.output
    assert yaml.safe_load(envoy_file.read_text())["static_resources"]["listeners"]
    as_json = CliRunner().invoke(cli, ["gen", "envoy", "tests.helpers.procs:Rewrite", "--uds",
                                       "/tmp/x.sock",
                                       "--format", "json"])
    assert json.loads(as_json.output)["static_resources"]["clusters"][0]["name"] == "extproc"
    check = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(envoy_file)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_other_policies_validate_and_refuse_what_eg_would():
    from extctl.config import gateway as gp

    route = [Target("HTTPRoute", "backend")]

    def policy(**fields) -> Deployment:
        return Deployment(HeadersOnly, ["/x.sock"], policy=Policy(**fields),
                          gateway=GatewayOptions(name="p", targets=route))

    docs = [
        gp.security_policy(policy(allow_cidrs=["10.0.0.0/8"], deny_cidrs=["10.1.0.0/16"])),
        gp.session_persistence(policy(session=SessionPersistence("SourceIP"))),
        gp.session_persistence(policy(session=SessionPersistence("Header", "x-user"))),
        gp.session_persistence(policy(
            session=SessionPersistence("Cookie", "session", cookie_ttl="1h30m"))),
        gp.client_traffic_policy(Deployment(HeadersOnly, ["/x.sock"],
                                          policy=Policy(xff_trusted_hops=2),
                                          gateway=GatewayOptions(name="p", targets=route,
                                                                 client_gateway="eg"))),
        gp.filter_order(policy(filter_order=[FilterPosition("wasm", "before", "ext_proc")])),
    ]
    for doc in docs:
        _valid(doc)
    rules = docs[0]["spec"]["authorization"]["rules"]
    assert [r["action"] for r in rules] == ["Deny", "Allow"]
    with pytest.raises(ConfigError, match="not a CIDR"):
        Policy(allow_cidrs=["10.0.0.1/8"])
    with pytest.raises(ConfigError, match="needs the header name"):
        SessionPersistence("Header")
    with pytest.raises(ConfigError, match="not a duration"):
        SessionPersistence("Cookie", "s", cookie_ttl="1 hour")
    with pytest.raises(ConfigError, match="before or after"):
        FilterPosition("wasm", "around", "ext_proc")
    with pytest.raises(ConfigError, match="unknown filter 'wasn'"):
        FilterPosition.parse("wasn:before:ext_proc")
    with pytest.raises(ConfigError, match="0 or more"):
        Policy(xff_trusted_hops=-1)


def test_envoy_configs_are_current_and_valid(tmp_path):
    """envoy-configs/ is what `python examples/configs.py` writes; regenerate when this fails."""
    import subprocess

    from configs import examples

    from extctl.testing import find_envoy

    root = Path(__file__).resolve().parents[3] / "envoy-configs"
    for directory, example in examples().items():
        for name, text in example.render().items():
            path = root / directory / name
            assert path.exists(), f"{path} missing: run python examples/configs.py"
            assert path.read_text() == text, f"{path} is stale: run python examples/configs.py"
        for doc in yaml.safe_load_all((root / directory / "gateway.yaml").read_text()):
            _valid(doc)
        # A module the standalone config loads from Envoy's working directory is there.
        for module in example.wasm:
            if module.file:
                (tmp_path / module.file).write_bytes(wasmtime.wat2wasm(
                    (root.parent / "examples" / "wasm-tagger" / "filter.wat").read_text()))
        check = subprocess.run([find_envoy(), "--mode", "validate", "-c",
                                str(root / directory / "envoy.yaml")], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_gen_gateway_with_every_policy_option_validates(tmp_path):
    out = tmp_path / "eg.yaml"
    result = gen(
        "gateway", "tests.helpers.procs:HeadersOnly", "--name", "edge", "--gateway", "eg",
        "--route", "api",
        "--uds", "/var/run/extproc/p.sock", "--message-timeout", "0.5",
        "--wasm-image", f"img=oci://registry.example.com/f/img:v1@sha256:{'a' * 64}",
        "--wasm-http", f"web=https://example.com/f.wasm@sha256:{'c' * 64}",
        "--wasm-config", 'img={"words": ["secret"]}', "--wasm-root-id", "web=root",
        "--wasm-fail-open", "web",
        "--pull-secret", "regcred", "--pull-policy", "Always",
        "--allow-cidr", "10.0.0.0/8", "--deny-cidr", "10.9.0.0/16",
        "--xff-trusted-hops", "2", "--session", "cookie:sticky:1h",
        "--filter-order", "wasm:before:ext_proc", "--filter-order", "rbac:before:wasm",
        "-o", str(out))
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    for doc in docs:
        _valid(doc)
    kinds = [d["kind"] for d in docs]
    assert kinds == ["EnvoyExtensionPolicy", "Backend", "SecurityPolicy", "BackendTrafficPolicy",
                     "ClientTrafficPolicy", "EnvoyProxy"]
    policy = docs[0]["spec"]
    assert policy["extProc"][0]["messageTimeout"] == "500ms"
    image, web = policy["wasm"]
    assert image["code"] == {"type": "Image", "pullPolicy": "Always", "image": {
        "url": "registry.example.com/f/img:v1", "sha256": "a" * 64,
        "pullSecretRef": {"name": "regcred"}}}
    assert image["config"] == {"words": ["secret"]}
    assert web["code"]["http"] == {"url": "https://example.com/f.wasm", "sha256": "c" * 64}
    assert web["rootID"] == "root" and web["failOpen"] is True
    assert "failOpen" not in image
    security = docs[2]["spec"]["authorization"]
    assert security["defaultAction"] == "Deny"
    assert docs[3]["spec"]["loadBalancer"]["consistentHash"] == {
        "type": "Cookie", "cookie": {"name": "sticky", "ttl": "1h"}}
    assert docs[4]["spec"]["targetRefs"][0]["name"] == "eg"
    assert docs[4]["spec"]["clientIPDetection"] == {"xForwardedFor": {"numTrustedHops": 2}}
    assert docs[5]["spec"]["filterOrder"] == [
        {"name": "envoy.filters.http.wasm", "before": "envoy.filters.http.ext_proc"},
        {"name": "envoy.filters.http.rbac", "before": "envoy.filters.http.wasm"}]


def test_gen_envoy_with_every_option_passes_envoy_validate(tmp_path, wat_module):
    import subprocess

    from extctl.testing import find_envoy

    module = wat_module  # envoy --mode validate loads local modules
    out = tmp_path / "envoy.yaml"
    result = gen(
        "envoy", "tests.helpers.procs:HeadersOnly", "--uds", "/tmp/p.sock", "--workers", "2",
        "--upstream", "127.0.0.1:8081", "--upstream", "127.0.0.1:8082",
        "--wasm", f"local={module}", "--wasm", f"remote=https://example.com/f.wasm@sha256:"
        f"{'d' * 64}", "--wasm-config", "local={}", "--wasm-fail-open", "remote",
        "--admin", "127.0.0.1:19901", "--allow-cidr", "10.0.0.0/8",
        "--deny-cidr", "10.9.0.0/16", "--xff-trusted-hops", "1", "--session", "Header:x-user",
        "--hash-algorithm", "maglev", "--filter-order", "ext_proc:after:wasm",
        "--fail-open", "--message-timeout", "2", "--access-log", "-o", str(out))
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    assert [f["name"] for f in manager["http_filters"]] == [
        "envoy.filters.http.wasm/local", "envoy.filters.http.wasm/remote",
        "envoy.filters.http.ext_proc/headersonly", "envoy.filters.http.rbac/deny-cidrs",
        "envoy.filters.http.rbac/allow-cidrs", "envoy.filters.http.router"]
    assert manager["xff_num_trusted_hops"] == 1
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1",
                                                            "port_value": 19901}
    plugins = {f["name"]: f["typed_config"]["config"] for f in manager["http_filters"][:2]}
    assert plugins["envoy.filters.http.wasm/remote"]["fail_open"] is True
    assert "fail_open" not in plugins["envoy.filters.http.wasm/local"]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["hash_policy"] == [{"header": {"header_name": "x-user"}, "terminal": True}]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters["upstream"]["lb_policy"] == "MAGLEV"
    remote_tls = clusters["wasm_source_1"]["transport_socket"]["typed_config"]
    assert "system_root_certs" in remote_tls["common_tls_context"]["validation_context"]
    # no buffered bodies: Envoy's own 1 MiB per connection, not 32 MiB
    assert clusters["upstream"]["per_connection_buffer_limit_bytes"] == 1024 * 1024
    assert len(clusters["extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    ext_proc = manager["http_filters"][2]["typed_config"]
    assert ext_proc["failure_mode_allow"] is True and ext_proc["message_timeout"] == "2s"
    # The local module is named from the file's directory, where its header says to run Envoy.
    check = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(out)],
                           capture_output=True, text=True, timeout=60, cwd=out.parent)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["envoy", "--allow-cidr", "10.0.0.1/8"], "'10.0.0.1/8' is not a CIDR"),
    (["envoy", "--session", "Query:x", "--upstream", "127.0.0.1:1"], "by 'Query'"),
    (["envoy", "--session", "SourceIP"], "needs upstreams"),
    (["envoy", "--filter-order", "wasm:ext_proc"], "is not FILTER:before|after:FILTER"),
    (["envoy", "--upstream", "nowhere"], "is not host:port"),
    (["envoy", "--admin", "0.0.0.0:9901"], "keep it on loopback"),
    (["envoy", "--admin", "localhost:9901"], "give an IP address"),
    (["envoy", "--listen", "localhost:10000"], "give an IP address"),
    (["envoy", "--wasm", "w=./missing.wasm"], "is not a file"),
    (["envoy", "--wasm", "w=/x.wasm", "--wasm", "w=/y.wasm"], "w is given twice"),
    (["gateway", "tests.helpers.procs:HeadersOnly", "--name", "n", "--route", "r", "--uds",
      "x.sock"],
     "absolute path"),
    (["gateway", "tests.helpers.procs:HeadersOnly", "--name", "n", "--namespace", "Bad NS",
      "--route", "r",
      "--uds", "/x.sock"], "is not a Kubernetes namespace"),
    (["gateway", "--name", "n", "--route", "r", "--wasm-image",
      f"w=https://example.com/x.wasm@sha256:{'a' * 64}"], "only oci:// references"),
    (["envoy", "--wasm", f"w=oci://r.example/x:1@sha256:{'a' * 64}"], "Envoy cannot pull"),
    (["envoy", "--wasm", "w=/x.wasm", "--wasm-fail-open", "v"], "no Wasm module named v"),
    (["envoy", "--wasm", "w=https://x/y.wasm"], "needs its sha256"),
    (["gateway", "--name", "n", "--route", "r", "--wasm-http", "w=https://x/y.wasm"],
     "needs @sha256:HEX"),
    (["gateway", "--name", "n", "--route", "r", "--wasm-image", "w=oci://r/x:1"],
     "give the image's manifest digest"),
    (["gateway", "--name", "n", "--route", "r", "--wasm-image",
      f"w=oci://r/x:1@sha256:{'a' * 64}", "--xff-trusted-hops", "1"], "name it"),
    (["gateway", "--name", "n", "--route", "r", "--wasm-image",
      f"w=oci://r/x:1@sha256:{'a' * 64}", "--wasm-config", "v={}"], "no Wasm module named v"),
    (["gateway", "--name", "n", "--route", "r", "--wasm-image",
      f"w=oci://r/x:1@sha256:{'a' * 64}", "--wasm-config", "w={x"], "not JSON"),
])
def test_gen_refuses_bad_input_with_exit_2_and_one_line(args, message):
    result = gen(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("\n") <= 1 or "Usage:" in result.output


def test_gen_envoy_resolves_names_and_refuses_a_file_that_is_not_wasm(tmp_path):
    import subprocess

    from extctl.testing import find_envoy

    out = tmp_path / "envoy.yaml"
    made = gen("envoy", "tests.helpers.procs:HeadersOnly", "--address", "localhost:9000",
                "--upstream", "localhost:8080", "-o", str(out))
    assert made.exit_code == 0, made.output
    clusters = {c["name"]: c for c in yaml.safe_load(out.read_text())["static_resources"][
        "clusters"]}
    assert clusters["extproc"]["type"] == clusters["upstream"]["type"] == "STRICT_DNS"
    check = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"not wasm")
    refused = gen("envoy", "--wasm", f"b={bogus}")
    assert refused.exit_code == 9 and "not a WebAssembly module" in refused.output


def test_buffer_limit_grows_only_for_processors_that_buffer_bodies():
    from tests.helpers.procs import BufferedJson, HeadersOnly


    def limit(cls):
        return Deployment(cls, ["/x.sock"]).envoy_bootstrap().static_resources.listeners[0]\
            .per_connection_buffer_limit_bytes.value

    assert limit(HeadersOnly) == 1024 * 1024
    assert limit(BufferedJson) == 32 * 1024 * 1024


def test_gen_gateway_digest_only_images_and_long_timeouts():
    result = gen("gateway", "tests.helpers.procs:HeadersOnly", "--name", "n", "--route", "r",
                  "--uds",
                  "/x.sock", "--message-timeout", "200", "--wasm-image",
                  f"w=oci://r.example/filters/w@sha256:{'a' * 64}")
    assert result.exit_code == 0, result.output
    policy = next(yaml.safe_load_all(result.output))
    _valid(policy)
    assert policy["spec"]["extProc"][0]["messageTimeout"] == "200s"
    image = policy["spec"]["wasm"][0]["code"]["image"]
    assert image["url"] == f"r.example/filters/w@sha256:{'a' * 64}"  # not :latest


def test_a_vm_configuration_is_for_a_standalone_envoy_only():
    from extctl.config.errors import GatewayError

    module = WasmModule("tag", url="https://example.com/tag.wasm", sha256="a" * 64,
                        vm_configuration="vm-1")
    with pytest.raises(GatewayError, match="no VM configuration"):
        resources(Deployment(wasm=[module], gateway=GatewayOptions(
            name="filters", targets=[Target("Gateway", "eg")])))
