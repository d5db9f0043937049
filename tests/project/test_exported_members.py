"""The public surface of ``extproc`` cannot drift by accident."""

import extproc
import extproc.exchange
import extproc.testing


def test_extproc_public_names():
    assert sorted(extproc.__all__) == sorted([
        "Body", "BodyMode", "ExtkitError", "ExtprocError", "FilterSpec", "Headers",
        "HookNameWarning",
        "ImmediateResponse",
        "ImportFromStringError", "MutationError", "ProcessingMode", "Processor",
        "ProcessorDefinitionError", "ProtocolError", "SERVICE_NAME", "ServeError", "Server",
        "ServerConfig", "ServerThread", "derive", "import_processor", "make_server", "serve",
        "serve_async",
    ])
    for name in extproc.__all__:
        member = getattr(extproc, name)
        if callable(member) and not isinstance(member, str):
            assert member.__module__.startswith("extproc"), name


def test_testing_public_names():
    shape = {"HeaderView", "LocalReply", "Message", "Upstream"}  # every double's vocabulary
    assert sorted(extproc.testing.__all__) == sorted([
        "Client", "Result", "ServerThread", "lifespan", "run", "run_sync", *shape])
    assert extproc.testing.ServerThread is extproc.ServerThread  # served for real, not a fake
    for name in shape:
        assert getattr(extproc.testing, name) is getattr(extproc.exchange, name)
    for name in set(extproc.testing.__all__) - {"ServerThread"} - shape:
        assert getattr(extproc.testing, name).__module__ == "extproc.testing"


def test_body_modes_are_the_four_envoy_gateway_names_and_grpc():
    # GRPC is only read from a hand-written Envoy config: no class may ask for it.
    assert [m.gateway_name for m in extproc.BodyMode if m is not extproc.BodyMode.GRPC] == [
        "Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed"]
    assert extproc.BodyMode.GRPC.proto_value == 5


def test_wasm_and_registry_public_names():
    import registry
    import wasm

    for package in (wasm, registry):
        for name in package.__all__:
            assert hasattr(package, name), name
    assert sorted(registry.__all__) == sorted([
        "LAYOUTS", "PULL_POLICIES", "AuthError", "Cache", "CheckResult", "Connection",
        "Credentials", "DigestMismatch", "InvalidArgument", "InvalidReference",
        "LimitExceeded", "NotAModule", "NotFound", "PullResult", "PushResult", "Reference",
        "RegistryClient", "RegistryError", "TransportError", "UnsafeArchive",
        "UnsupportedImage", "build_image", "check_file", "check_image", "from_docker_config",
        "from_secret_file", "is_loopback", "parse_reference", "pull", "pull_http", "push"])
    for name in registry.__all__:
        member = getattr(registry, name)
        if isinstance(member, type) and issubclass(member, Exception):
            assert issubclass(member, registry.RegistryError), name
    assert {"inspect_file", "verify_file", "InvalidModule", "ProxyWasm", "WasmTrap",
            "MissingImports", "MemoryAccess", "UnsupportedAbi", "GrpcStream",
            "GrpcStreamHandler"} <= set(wasm.__all__)
    import wasm.emulator

    for name in wasm.emulator.__all__:
        assert getattr(wasm.emulator, name).__module__ == "wasm.emulator", name
