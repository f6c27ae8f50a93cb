// Command kstatus-check prints what sigs.k8s.io/cli-utils' kstatus library computes for each
// object it reads: the same library Flux and kpt use to decide whether an applied object is
// Current, InProgress, Failed or Terminating.
//
//	kstatus-check [FILE...]     (no FILE or "-": standard input)
//
// Input is YAML (multi-document) or JSON; a List's items are expanded. Output is one JSON object
// per line: {"kind","namespace","name","status","message"}. The exit code is 0 unless an input
// could not be read or an object could not be evaluated.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func objects(r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bufio.NewReader(r), 4096)
	var out []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			continue
		}
		// UnmarshalJSON keeps integers as int64, as the API server's objects have them
		// (a plain map decode would turn metadata.generation into a float64).
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			return nil, err
		}
		if u.IsList() {
			list, err := u.ToList()
			if err != nil {
				return nil, err
			}
			for i := range list.Items {
				out = append(out, &list.Items[i])
			}
			continue
		}
		out = append(out, u)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		args = []string{"-"}
	}
	enc := json.NewEncoder(stdout)
	for _, name := range args {
		var r io.Reader = stdin
		if name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		objs, err := objects(r)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		for _, u := range objs {
			res, err := status.Compute(u)
			if err != nil {
				return fmt.Errorf("%s: %s/%s: %w", name, u.GetKind(), u.GetName(), err)
			}
			if err := enc.Encode(result{
				Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(),
				Status: res.Status.String(), Message: res.Message,
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(1)
	}
}
