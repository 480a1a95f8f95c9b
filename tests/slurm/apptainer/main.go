// A stand-in for the `apptainer` (or `singularity`) executable, for tests on machines where the real runtime
// cannot be installed. It runs the command on the host, but with what matters to the job suite done the way the
// real runtime does it:
//
//   - It is a Go program, so it has the Go runtime's real signal behaviour: at start the runtime installs its own
//     handler for every signal except an inherited SIG_IGN on SIGHUP and SIGINT, and a handled signal is reset
//     to SIG_DFL in a child at fork/exec. A launcher that set SIGUSR1/SIGUSR2 to "ignore" before starting the
//     runtime finds them back at "terminate" inside the container.
//   - Signals it receives are forwarded to the container's process, as apptainer's monitoring process does.
//   - Its exit status is the command's, or 128+N when the command was killed by signal N.
//   - The environment is built like apptainer's: the host's (or nothing with --cleanenv, apart from a few
//     basics), then the image's own (%environment; here: the image file's KEY=VALUE lines, PATH among them,
//     since the host PATH never enters a container), then APPTAINERENV_X / SINGULARITYENV_X (as X; run as
//     `singularity`, only the latter), then
//     --env-file and --env. APPTAINER_CONTAINER and APPTAINER_NAME are set.
//   - IMAGE must exist (exit 255 and a FATAL line like the real one), binds must name existing sources, --pwd
//     must exist. Binds are checked but not mounted: the tests bind every path at the same place.
//
// Usage: apptainer exec [--nv] [--cleanenv|-e] [--env-file F] [--env K=V] [--pwd D] [-B|--bind SRC[:DST[:ro]],...]
// IMAGE COMMAND [ARGS...]; also `apptainer version`.
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

const version = "1.3.0-standin"

// Kept by --cleanenv, as the real runtime keeps the terminal and locale.
var cleanenvKeep = []string{"TERM", "LANG", "LC_ALL", "HOME", "USER", "LOGNAME"}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type options struct {
	cleanenv bool
	envFiles []string
	envs     []string
	pwd      string
	binds    []string
	image    string
	command  []string
}

func fatal(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FATAL:   "+format+"\n", args...)
	os.Exit(255)
}

func parse(args []string) options {
	var o options
	value := func(i *int, name string) string {
		if *i+1 >= len(args) {
			fatal("flag needs an argument: %s", name)
		}
		*i++
		return args[*i]
	}
	i := 0
	for ; i < len(args) && strings.HasPrefix(args[i], "-"); i++ {
		name, inline, hasInline := strings.Cut(args[i], "=")
		get := func() string {
			if hasInline {
				return inline
			}
			return value(&i, name)
		}
		switch name {
		case "--nv", "--nvccli", "--writable-tmpfs", "--no-home", "--containall", "-C", "--contain", "-c":
			// accepted; nothing to emulate on a CPU host
		case "--cleanenv", "-e":
			o.cleanenv = true
		case "--env-file":
			o.envFiles = append(o.envFiles, get())
		case "--env":
			o.envs = append(o.envs, strings.Split(get(), ",")...)
		case "--pwd":
			o.pwd = get()
		case "--bind", "-B":
			o.binds = append(o.binds, strings.Split(get(), ",")...)
		default:
			fatal("unknown flag: %s", args[i])
		}
	}
	if i >= len(args) {
		fatal("exec requires an image and a command")
	}
	o.image = args[i]
	o.command = args[i+1:]
	if len(o.command) == 0 {
		fatal("exec requires a command to run inside the container")
	}
	return o
}

// readEnvFile reads KEY=VALUE lines (an optional `export `, # comments, values optionally single- or
// double-quoted as shlex.quote writes them); apptainer evaluates the file with a shell, which is a superset.
func readEnvFile(path string) ([][2]string, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var pairs [][2]string
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: not KEY=VALUE: %q", path, line)
		}
		pairs = append(pairs, [2]string{key, unquote(value)})
	}
	return pairs, scanner.Err()
}

// unquote undoes POSIX shell quoting of one word: '...' literal, "..." and bare with backslash escapes.
func unquote(word string) string {
	var out strings.Builder
	for i := 0; i < len(word); i++ {
		switch c := word[i]; c {
		case '\'':
			end := strings.IndexByte(word[i+1:], '\'')
			if end < 0 {
				end = len(word) - i - 1
			}
			out.WriteString(word[i+1 : i+1+end])
			i += end + 1
		case '"':
			for i++; i < len(word) && word[i] != '"'; i++ {
				if word[i] == '\\' && i+1 < len(word) {
					i++
				}
				out.WriteByte(word[i])
			}
		case '\\':
			if i+1 < len(word) {
				i++
				out.WriteByte(word[i])
			}
		default:
			out.WriteByte(c)
		}
	}
	return out.String()
}

func environment(o options) []string {
	env := map[string]string{}
	var order []string
	set := func(key, value string) {
		if _, seen := env[key]; !seen {
			order = append(order, key)
		}
		env[key] = value
	}
	for _, kv := range os.Environ() {
		key, value, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(key, "APPTAINERENV_") || strings.HasPrefix(key, "SINGULARITYENV_") ||
			key == "PATH" || key == "LD_LIBRARY_PATH" {
			continue // never passed as such: the container has its own PATH and libraries
		}
		if o.cleanenv && !contains(cleanenvKeep, key) {
			continue
		}
		set(key, value)
	}
	set("PATH", defaultPath)
	image, err := readEnvFile(o.image) // the image's %environment
	if err != nil {
		fatal("could not open image %s: %v", o.image, err)
	}
	for _, kv := range image {
		set(kv[0], kv[1])
	}
	for _, prefix := range envPrefixes() {
		for _, kv := range os.Environ() {
			key, value, _ := strings.Cut(kv, "=")
			if strings.HasPrefix(key, prefix) && len(key) > len(prefix) {
				set(strings.TrimPrefix(key, prefix), value)
			}
		}
	}
	for _, path := range o.envFiles {
		pairs, err := readEnvFile(path)
		if err != nil {
			fatal("while processing %s: %v", path, err)
		}
		for _, kv := range pairs {
			set(kv[0], kv[1])
		}
	}
	for _, kv := range o.envs {
		key, value, _ := strings.Cut(kv, "=")
		set(key, value)
	}
	abs, _ := filepath.Abs(o.image)
	set("APPTAINER_CONTAINER", abs)
	set("APPTAINER_NAME", filepath.Base(o.image))
	list := make([]string, 0, len(order))
	for _, key := range order {
		list = append(list, key+"="+env[key])
	}
	return list
}

// envPrefixes: apptainer reads APPTAINERENV_X and, for compatibility, SINGULARITYENV_X; singularity (run as
// that name) only SINGULARITYENV_X.
func envPrefixes() []string {
	if filepath.Base(os.Args[0]) == "singularity" {
		return []string{"SINGULARITYENV_"}
	}
	return []string{"SINGULARITYENV_", "APPTAINERENV_"}
}

func contains(list []string, s string) bool {
	for _, item := range list {
		if item == s {
			return true
		}
	}
	return false
}

// lookPath resolves the command with the container's PATH, not the runtime's own.
func lookPath(name string, env []string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path := defaultPath
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			path = kv[len("PATH="):]
		}
	}
	for _, dir := range filepath.SplitList(path) {
		candidate := filepath.Join(dir, name)
		if info, err := os.Stat(candidate); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return candidate
		}
	}
	fatal("\"%s\": executable file not found in $PATH", name)
	return ""
}

func run(o options) int {
	if info, err := os.Stat(o.image); err != nil || info.IsDir() {
		abs, _ := filepath.Abs(o.image)
		fatal("could not open image %s: failed to retrieve path for %s: lstat %s: no such file or directory",
			abs, o.image, abs)
	}
	for _, bind := range o.binds {
		source := strings.Split(bind, ":")[0]
		if _, err := os.Stat(source); err != nil {
			fatal("container creation failed: mount hook function failure: mount %s->%s error: while mounting %s: "+
				"mount source %s doesn't exist", source, source, source, source)
		}
	}
	env := environment(o)
	cmd := exec.Command(lookPath(o.command[0], env), o.command[1:]...)
	cmd.Args[0] = o.command[0]
	cmd.Env, cmd.Dir = env, o.pwd
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if o.pwd != "" {
		if info, err := os.Stat(o.pwd); err != nil || !info.IsDir() {
			fatal("--pwd %s: no such directory", o.pwd)
		}
	}
	// Every catchable signal, from here on, is ours to forward (Go's runtime already handles them all).
	incoming := make(chan os.Signal, 32)
	signal.Notify(incoming)
	if err := cmd.Start(); err != nil {
		fatal("exec %s failed: %v", o.command[0], err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-incoming:
				if sig == syscall.SIGCHLD || sig == syscall.SIGURG { // the runtime's own business
					continue
				}
				_ = cmd.Process.Signal(sig)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	status, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err != nil && !ok {
		fatal("waiting for %s: %v", o.command[0], err)
	}
	if status.Signaled() { // as a shell reports it: the Go runtime would not let us die of most signals
		fmt.Fprintf(os.Stderr, "%s: container process killed by signal %d (%v)\n", filepath.Base(os.Args[0]),
			int(status.Signal()), status.Signal())
		return 128 + int(status.Signal())
	}
	return status.ExitStatus()
}

func main() {
	if len(os.Args) < 2 {
		fatal("usage: %s exec [options] IMAGE COMMAND [ARGS...]", filepath.Base(os.Args[0]))
	}
	switch os.Args[1] {
	case "version", "--version":
		fmt.Printf("%s version %s\n", filepath.Base(os.Args[0]), version)
	case "exec":
		os.Exit(run(parse(os.Args[2:])))
	default:
		fatal("unknown command %q (the stand-in knows exec and version)", os.Args[1])
	}
}
