/*
 * The tracepoints of the `python` and `python_fast` providers, defined in
 * the extension module, the small C-ABI wrappers through which Rust emits
 * each event (src/ffi/lttng.rs declares them), and the loading of the
 * probes.
 *
 * The extension does not link LTTng-UST: the tracepoints are defined with
 * dynamic probe linkage (lttng-ust(3)), and their probes are in a shared
 * object of their own (provider.c), which pyust_tp_load() dlopens at
 * import. Without it, or without LTTng-UST on the machine, every enabled
 * flag stays 0 and no emitter is ever called.
 *
 * Rust reads the enabled flags (`pyust_tp_states`) before it extracts any string, then
 * calls `pyust_tp_emit_*`, which record unconditionally: the strings are
 * only built when some session listens.
 */
#define _GNU_SOURCE /* dladdr */
#define LTTNG_UST_TRACEPOINT_DEFINE
#define LTTNG_UST_TRACEPOINT_PROBE_DYNAMIC_LINKAGE
#include "python_tp.h"
#include "fast_tp.h"
#ifdef PYUST_BENCH
#include "proto_tp.h" /* the prototype's provider, for the benchmark */
#endif

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/*
 * The provider's file name beside the extension module (build.rs: the hash
 * of its content, so that builds for other systems sharing the folder do
 * not overwrite each other's).
 */
#ifndef PYUST_PROVIDER
#error "build.rs defines PYUST_PROVIDER"
#endif

/*
 * LTTng-UST's fork protocol (lttng/ust-fork.h), in liblttng-ust: reached
 * through the provider's handle.
 */
static void (*pyust_ust_before_fork)(sigset_t *);
static void (*pyust_ust_after_fork_parent)(sigset_t *);
static void (*pyust_ust_after_fork_child)(sigset_t *);

static char pyust_load_error[1024];

/*
 * Loads the provider from the extension's own folder, once, at import.
 * Returns NULL when it is loaded, else why not (dlerror()'s text: it
 * names liblttng-ust.so.1 when LTTng-UST is missing). The handle is never
 * closed: LTTng-UST keeps pointers into it.
 */
const char *pyust_tp_load(void)
{
	Dl_info self;
	const char *slash;
	void *provider;
	int len;

	if (!dladdr((void *) pyust_tp_load, &self) || !self.dli_fname) {
		return "cannot find the extension module's own path";
	}
	slash = strrchr(self.dli_fname, '/');
	len = slash ? (int) (slash - self.dli_fname) : 1;
	snprintf(pyust_load_error, sizeof(pyust_load_error), "%.*s/%s", len,
		slash ? self.dli_fname : ".", PYUST_PROVIDER);
	provider = dlopen(pyust_load_error, RTLD_NOW | RTLD_LOCAL);
	if (!provider) {
		snprintf(pyust_load_error, sizeof(pyust_load_error), "%s",
			dlerror());
		return pyust_load_error;
	}
	/* dlsym on a handle also searches its dependencies (liblttng-ust). */
	/* The after-fork functions first: a fork that sees the before-fork
	 * one (pyust_tp_before_fork) calls them. */
	*(void **) &pyust_ust_after_fork_parent =
		dlsym(provider, "lttng_ust_after_fork_parent");
	*(void **) &pyust_ust_after_fork_child =
		dlsym(provider, "lttng_ust_after_fork_child");
	__atomic_store_n((void **) &pyust_ust_before_fork,
			 dlsym(provider, "lttng_ust_before_fork"), __ATOMIC_RELEASE);
	return NULL;
}

/*
 * The section listing the tracepoints (lttng_ust_tracepoints_ptrs) is
 * found by LTTng-UST through weak __start_/__stop_ symbols, which do not
 * keep it alive under the linker's --gc-sections (Rust links cdylibs with
 * it, and lld's default -z start-stop-gc ignores even strong ones). Rust
 * calls this once at import: its reference to one pointer of the section
 * keeps the section (this file's pointers are one input section), and the
 * result says whether all the tracepoints are there.
 */
extern struct lttng_ust_tracepoint * const __start_lttng_ust_tracepoints_ptrs[];
extern struct lttng_ust_tracepoint * const __stop_lttng_ust_tracepoints_ptrs[];

int pyust_tp_count(void)
{
	struct lttng_ust_tracepoint *const *volatile keep =
		&lttng_ust_tracepoint_ptr_python___call;

	(void) keep;
	return (int) (__stop_lttng_ust_tracepoints_ptrs
		- __start_lttng_ust_tracepoints_ptrs);
}

/*
 * The enabled flags of eight events (what lttng_ust_tracepoint_enabled()
 * reads), in the order of the EV_* bits of src/ffi/lttng.rs: Rust loads them
 * directly on the hot path, one load per check instead of a call.
 */
const int *const pyust_tp_states[8] = {
	&lttng_ust_tracepoint_python___call.state,
	&lttng_ust_tracepoint_python___return.state,
	&lttng_ust_tracepoint_python___c_call.state,
	&lttng_ust_tracepoint_python___c_return.state,
	&lttng_ust_tracepoint_python___exception.state,
	&lttng_ust_tracepoint_python_fast___batch.state,
	&lttng_ust_tracepoint_python_fast___c_calls.state,
	&lttng_ust_tracepoint_python_fast___exception.state,
};

/*
 * A process that dies of a signal while one of its threads writes an
 * event leaves that event's space in LTTng's ring buffer reserved and never
 * committed: with per-user buffers (what sessions use), that CPU's buffer
 * then never completes, and the session loses every event on that CPU
 * from there on (seen with Pool.terminate()'s SIGTERM). So each emitter
 * marks its thread while it writes, and pyust's handler of the signals
 * that end a program (installed where they have their default action)
 * lets the write finish first: on the thread it interrupted, it only notes
 * the signal, and the emitter dies of it when the event is written.
 */
static __thread volatile sig_atomic_t pyust_emitting
	__attribute__((tls_model("initial-exec")));
static volatile sig_atomic_t pyust_deferred;
static void pyust_die(int sig);

#define PYUST_EMIT(write) \
	do { \
		pyust_emitting = 1; \
		write; \
		pyust_emitting = 0; \
		if (__builtin_expect(pyust_deferred != 0, 0)) \
			pyust_die(pyust_deferred); \
	} while (0)

void pyust_tp_emit_call(const char *co_name, const char *co_qualname,
		const char *module, const char *co_filename,
		int32_t co_firstlineno)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python, call, co_name, co_qualname, module,
		co_filename, co_firstlineno));
}

void pyust_tp_emit_return(void)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python, return));
}

void pyust_tp_emit_c_call(const char *co_name, const char *co_qualname)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python, c_call, co_name, co_qualname));
}

void pyust_tp_emit_c_return(void)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python, c_return));
}

void pyust_tp_emit_exception(const char *exc_type, const char *co_qualname,
		int32_t lineno)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python, exception, exc_type, co_qualname,
		lineno));
}

void pyust_tp_emit_fast_def(uint32_t id, const char *co_name,
		const char *co_qualname, const char *module,
		const char *co_filename, int32_t co_firstlineno)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python_fast, def, id, co_name, co_qualname,
		module, co_filename, co_firstlineno));
}

void pyust_tp_emit_fast_batch(int32_t tid, uint64_t base, uint64_t span,
		uint64_t ticks, const uint8_t *data, uint16_t len)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python_fast, batch, tid, base, span, ticks,
		data, len));
}

void pyust_tp_emit_fast_exception(const char *exc_type)
{
	PYUST_EMIT(lttng_ust_do_tracepoint(python_fast, exception, exc_type));
}

/*
 * The fast mode (src/fast.rs): a program ended by a signal runs no exit
 * hook, so its threads' last records would stay in their batches. Where
 * a signal that ends a program has its default action, this handler lets
 * an event being written finish (above), commits the batches (LTTng-UST's
 * tracepoints may be called from signal handlers), then dies of the
 * signal as before. A handler the program installs later replaces it.
 */
extern void pyust_fast_flush_on_signal(void);

/*
 * Set by the first stop signal's handler, in whichever thread: a second
 * one (SIGTERM twice, a supervisor's retries) must not cut that handler's
 * commit of the batches short; the first one ends the process.
 */
static volatile sig_atomic_t pyust_dying;

static void pyust_die(int sig)
{
	pyust_deferred = 0; /* the batches' own events are not interrupted */
	pyust_dying = 1;
	pyust_fast_flush_on_signal();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void pyust_on_stop_signal(int sig)
{
	int saved = errno;

	if (pyust_dying) {
		/* The first one's handler is committing; it ends the process. */
	} else if (pyust_emitting) {
		pyust_deferred = sig; /* the emitter dies of it */
	} else {
		pyust_die(sig);
	}
	errno = saved;
}

/* The signals whose default action ends the program (SIGINT: Python's). */
static const int pyust_stop_signals[] = {
	SIGTERM, SIGHUP, SIGQUIT, SIGUSR2, SIGALRM,
};

int pyust_guard_stop_signals(void)
{
	unsigned i;

	for (i = 0; i < sizeof(pyust_stop_signals) / sizeof(int); i++) {
		struct sigaction old, sa;
		int sig = pyust_stop_signals[i];

		if (sigaction(sig, NULL, &old) != 0)
			return -1;
		if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL)
			continue; /* the program's own (or pyust's already) */
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = pyust_on_stop_signal;
		sa.sa_flags = SA_NODEFER;
		sigemptyset(&sa.sa_mask);
		if (sigaction(sig, &sa, NULL) != 0)
			return -1;
	}
	return 0;
}

/*
 * pyust's own threads (the watcher, the flusher) block the signals that
 * end or stop a program: the kernel then hands a signal sent to the
 * process to one of the program's threads, and the SIGTERM handler above
 * never runs on a thread that holds the lock it needs.
 */
void pyust_block_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGQUIT);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* The calling thread's id, as LTTng's vtid context gives it. */
int32_t pyust_gettid(void)
{
	return (int32_t) syscall(SYS_gettid);
}

/*
 * LTTng-UST's fork protocol (what liblttng-ust-fork.so does by wrapping
 * fork()): the child re-registers with the session daemon under its own
 * pid. Python calls these through os.register_at_fork; one fork at a time
 * runs per process (the GIL is held), so one saved mask suffices. Without
 * the provider there is nothing to re-register.
 */
static sigset_t pyust_fork_sigset;
/*
 * Whether this thread's fork went through LTTng-UST's before-fork: the
 * provider is loaded when tracing is first asked for, which another
 * thread may do while this one forks; the after-fork calls must match.
 */
static __thread int pyust_fork_ust __attribute__((tls_model("initial-exec")));

void pyust_tp_before_fork(void)
{
	pyust_fork_ust = pyust_ust_before_fork != NULL;
	if (pyust_fork_ust)
		pyust_ust_before_fork(&pyust_fork_sigset);
}

void pyust_tp_after_fork_parent(void)
{
	if (pyust_fork_ust)
		pyust_ust_after_fork_parent(&pyust_fork_sigset);
	pyust_fork_ust = 0;
}

void pyust_tp_after_fork_child(void)
{
	if (pyust_fork_ust)
		pyust_ust_after_fork_child(&pyust_fork_sigset);
	pyust_fork_ust = 0;
}

/*
 * `pyust record --flight-recorder`: SIGUSR1 sent to the traced program asks
 * record (process `pid`) for a snapshot. The handler only passes the signal
 * on (kill() is async-signal-safe), so it works whatever the program is
 * doing, even deep in C code, and runs no Python code that would show in
 * the trace. A handler the program installs later replaces it.
 */
static volatile sig_atomic_t pyust_snapshot_pid;

static void pyust_pass_snapshot_signal(int sig)
{
	int saved = errno;

	if (pyust_snapshot_pid > 0)
		kill((pid_t) pyust_snapshot_pid, sig);
	errno = saved;
}

int pyust_forward_sigusr1(int pid)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = pyust_pass_snapshot_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	pyust_snapshot_pid = pid;
	return sigaction(SIGUSR1, &sa, NULL);
}
