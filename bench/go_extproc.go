// A minimal ext_proc server in Go: the compiled reference bench/run.py measures envoy-extkit
// against. It does the work of bench/procs.py's processors (and of minimal_servicer.py) in
// each scenario:
//
//	headers:  sets x-extkit: 1 on the request headers and x-extkit-response: 1 on the response
//	          headers (what procs.BothHeaders / procs.RequestHeader do);
//	streamed: rewrites each response body chunk, "secret" -> "******" (procs.StreamedRewrite);
//	buffered: adds "added_by" to the JSON request body (procs.BufferedJson);
//	append:   appends one byte to the request body (procs.AppendByte).
//
// Every other message gets the empty answer of its kind, as Envoy expects (request_headers ->
// a HeadersResponse in request_headers, and so on).
//
// It is written the way a Go team would write it with grpc-go (one goroutine per stream,
// default server options but the 64 MiB message limits extctl serve also sets), with one
// difference: instead of Envoy's generated Go types (go-control-plane, not packaged in Debian)
// it reads and writes the wire format with protowire through a raw-bytes codec. It decodes what
// generated code would for the phases it answers (the header map into keys and values, the
// body) and skips the rest (metadata_context, attributes, protocol_config), which Envoy sends
// small or empty here.
//
// Built by bench/run.py in GOPATH mode against Debian's golang-google-grpc-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o go_extproc bench/go_extproc.go
//	./go_extproc headers /tmp/go.sock        (or 127.0.0.1:9000)
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const maxMessage = 64 << 20

// ProcessingRequest's oneof fields and the ProcessingResponse field that answers each.
var answerField = map[protowire.Number]protowire.Number{
	2: 1, // request_headers -> request_headers (HeadersResponse)
	3: 2, // response_headers -> response_headers (HeadersResponse)
	4: 3, // request_body -> request_body (BodyResponse)
	5: 4, // response_body -> response_body (BodyResponse)
	6: 5, // request_trailers -> request_trailers (TrailersResponse)
	7: 6, // response_trailers -> response_trailers (TrailersResponse)
}

// rawCodec replaces grpc-go's "proto" codec (the one application/grpc selects): messages stay
// wire bytes. grpc-go 1.33 hands Unmarshal a fresh buffer per message, so it is not copied.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*v.(*[]byte) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

type header struct {
	key   string
	value []byte
}

// field returns the first length-delimited field numbered num in msg (nil if absent).
func field(msg []byte, num protowire.Number) ([]byte, error) {
	for len(msg) > 0 {
		n, typ, size := protowire.ConsumeTag(msg)
		if size < 0 {
			return nil, protowire.ParseError(size)
		}
		msg = msg[size:]
		if n == num && typ == protowire.BytesType {
			value, size := protowire.ConsumeBytes(msg)
			if size < 0 {
				return nil, protowire.ParseError(size)
			}
			return value, nil
		}
		size = protowire.ConsumeFieldValue(n, typ, msg)
		if size < 0 {
			return nil, protowire.ParseError(size)
		}
		msg = msg[size:]
	}
	return nil, nil
}

// request returns which phase a ProcessingRequest carries and that phase's message.
func request(msg []byte) (protowire.Number, []byte, error) {
	for len(msg) > 0 {
		n, typ, size := protowire.ConsumeTag(msg)
		if size < 0 {
			return 0, nil, protowire.ParseError(size)
		}
		msg = msg[size:]
		if _, ok := answerField[n]; ok && typ == protowire.BytesType {
			value, size := protowire.ConsumeBytes(msg)
			if size < 0 {
				return 0, nil, protowire.ParseError(size)
			}
			return n, value, nil
		}
		size = protowire.ConsumeFieldValue(n, typ, msg)
		if size < 0 {
			return 0, nil, protowire.ParseError(size)
		}
		msg = msg[size:]
	}
	return 0, nil, errors.New("ProcessingRequest without a request")
}

// headers decodes HttpHeaders.headers (a HeaderMap) as generated code would.
func headers(msg []byte) ([]header, error) {
	headerMap, err := field(msg, 1)
	if err != nil {
		return nil, err
	}
	var out []header
	for len(headerMap) > 0 {
		n, typ, size := protowire.ConsumeTag(headerMap)
		if size < 0 {
			return nil, protowire.ParseError(size)
		}
		headerMap = headerMap[size:]
		if n != 1 || typ != protowire.BytesType {
			size = protowire.ConsumeFieldValue(n, typ, headerMap)
			if size < 0 {
				return nil, protowire.ParseError(size)
			}
			headerMap = headerMap[size:]
			continue
		}
		value, size := protowire.ConsumeBytes(headerMap)
		if size < 0 {
			return nil, protowire.ParseError(size)
		}
		headerMap = headerMap[size:]
		key, err := field(value, 1)
		if err != nil {
			return nil, err
		}
		raw, err := field(value, 3)
		if err != nil {
			return nil, err
		}
		out = append(out, header{string(key), append([]byte(nil), raw...)})
	}
	return out, nil
}

// wrap nests payload in one length-delimited field per number, outermost first, copying the
// payload once.
func wrap(payload []byte, path ...protowire.Number) []byte {
	sizes := make([]int, len(path))
	n := len(payload)
	for i := len(path) - 1; i >= 0; i-- {
		sizes[i] = n
		n += protowire.SizeTag(path[i]) + protowire.SizeVarint(uint64(n))
	}
	out := make([]byte, 0, n)
	for i, num := range path {
		out = protowire.AppendTag(out, num, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(sizes[i]))
	}
	return append(out, payload...)
}

// setHeader answers a headers phase with one header set (append=false, as extproc sends it).
func setHeader(answer protowire.Number, key, value string) []byte {
	var headerValue []byte
	headerValue = protowire.AppendTag(headerValue, 1, protowire.BytesType)
	headerValue = protowire.AppendString(headerValue, key)
	headerValue = protowire.AppendTag(headerValue, 3, protowire.BytesType)
	headerValue = protowire.AppendString(headerValue, value)
	var option []byte
	option = protowire.AppendTag(option, 1, protowire.BytesType)
	option = protowire.AppendBytes(option, headerValue)
	option = protowire.AppendTag(option, 2, protowire.BytesType) // append: BoolValue{false}
	option = protowire.AppendVarint(option, 0)
	// ProcessingResponse.<phase>.response (CommonResponse).header_mutation.set_headers
	return wrap(option, answer, 1, 2, 1)
}

// replaceBody answers a body phase with a body mutation.
func replaceBody(answer protowire.Number, body []byte) []byte {
	// ProcessingResponse.<phase>.response (CommonResponse).body_mutation.body
	return wrap(body, answer, 1, 3, 1)
}

func process(work string, msg []byte) ([]byte, error) {
	phase, payload, err := request(msg)
	if err != nil {
		return nil, err
	}
	answer := answerField[phase]
	switch {
	case phase == 2 && work == "headers":
		if _, err := headers(payload); err != nil {
			return nil, err
		}
		return setHeader(answer, "x-extkit", "1"), nil
	case phase == 3 && work == "headers":
		if _, err := headers(payload); err != nil {
			return nil, err
		}
		return setHeader(answer, "x-extkit-response", "1"), nil
	case phase == 4 && work == "buffered":
		body, err := field(payload, 1)
		if err != nil {
			return nil, err
		}
		var document map[string]interface{}
		if err := json.Unmarshal(body, &document); err != nil {
			return nil, err
		}
		document["added_by"] = "extkit"
		changed, err := json.Marshal(document)
		if err != nil {
			return nil, err
		}
		return replaceBody(answer, changed), nil
	case phase == 4 && work == "append":
		body, err := field(payload, 1)
		if err != nil {
			return nil, err
		}
		return replaceBody(answer, append(body[:len(body):len(body)], 'x')), nil
	case phase == 5 && work == "streamed":
		body, err := field(payload, 1)
		if err != nil {
			return nil, err
		}
		return replaceBody(answer, bytes.ReplaceAll(body, []byte("secret"), []byte("******"))), nil
	}
	return wrap(nil, answer), nil // the phase's empty answer
}

func serveStream(work string) grpc.StreamHandler {
	return func(_ interface{}, stream grpc.ServerStream) error {
		for {
			var in []byte
			if err := stream.RecvMsg(&in); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
			out, err := process(work, in)
			if err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			if err := stream.SendMsg(&out); err != nil {
				return err
			}
		}
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_extproc headers|streamed|buffered|append LISTEN")
		os.Exit(2)
	}
	work, listen := os.Args[1], os.Args[2]
	encoding.RegisterCodec(rawCodec{})
	network := "unix"
	if !strings.HasPrefix(listen, "/") && strings.Contains(listen, ":") {
		network = "tcp"
	} else {
		_ = os.Remove(listen)
	}
	listener, err := net.Listen(network, listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage))
	server.RegisterService(&grpc.ServiceDesc{
		ServiceName: "envoy.service.ext_proc.v3.ExternalProcessor",
		HandlerType: (*interface{})(nil),
		Streams: []grpc.StreamDesc{{
			StreamName: "Process", Handler: serveStream(work),
			ServerStreams: true, ClientStreams: true,
		}},
		Metadata: "envoy/service/ext_proc/v3/external_processor.proto",
	}, struct{}{})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	stopped := make(chan struct{})
	go func() {
		<-signals
		timer := time.AfterFunc(time.Second, server.Stop)
		server.GracefulStop()
		timer.Stop()
		close(stopped)
	}()
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	<-stopped // Serve returns once the listener is closed; the streams drain after that
	if network == "unix" {
		_ = os.Remove(listen)
	}
}
