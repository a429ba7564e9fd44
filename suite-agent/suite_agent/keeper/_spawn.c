/* The keeper's native spawner: a child created directly inside its cgroup v2 directory, without
 * copying the keeper.
 *
 * clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP) is what posix_spawn does, plus the cgroup
 * (glibc 2.39 has posix_spawnattr_setcgroup_np; older ones have no way to ask for it). The child
 * shares the keeper's memory and runs on its stack, as after vfork(), while the keeper's thread
 * waits for the exec: so the child only makes system calls, from a function of its own whose
 * frame lies below the keeper's, and reports a failure through memory both can see.
 *
 * The child shares the keeper's descriptor table too (CLONE_FILES): the keeper holds two pipe
 * ends a service, and copying thousands of them into each child, for its exec to close them all
 * again, made a spawn about 0.1 ms slower at 1000 services with the CPU caches cold, as a respawn
 * finds them. The child's stdin, stdout and
 * stderr are put on the keeper's own 0-2 for the time of the clone, and the child's first call,
 * close_range(3, ~0U, CLOSE_RANGE_UNSHARE), gives it a table of its own with those three alone
 * (Linux 5.9; before it, the copy as before). Only for a single-threaded caller: the keeper.
 *
 * Done from Python instead (fork semantics), a spawn copies the keeper's page tables, the child
 * takes copy-on-write faults while it runs Python up to its exec, and the keeper takes a fault
 * on every page it writes afterwards: about 3.5 ms a spawn against 0.3 ms here.
 *
 * Built with the package when a C compiler is there (an optional extension); without it the
 * keeper falls back to that Python path. Linux on x86_64 and aarch64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#define SPAWN_SUPPORTED 1
#else
#define SPAWN_SUPPORTED 0
#endif

#define SPAWN_CLONE_VM 0x00000100ULL
#define SPAWN_CLONE_FILES 0x00000400ULL
#define SPAWN_CLONE_VFORK 0x00004000ULL
#define SPAWN_CLONE_INTO_CGROUP 0x200000000ULL
#define SPAWN_SYS_CLONE3 435
#define SPAWN_SYS_CLOSE_RANGE 436
#define SPAWN_CLOSE_RANGE_UNSHARE (1U << 1)
#define MAX_RLIMITS 16
#define MAX_RESET 64

struct spawn_clone_args { /* struct clone_args, CLONE_ARGS_SIZE_VER2 */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};

enum stage { STAGE_NONE, STAGE_PGID, STAGE_CWD, STAGE_FDS, STAGE_RLIMIT, STAGE_USER, STAGE_EXEC, STAGE_FILES };

/* Whether the child may share the keeper's descriptor table (below); cleared for good the first
 * time the kernel refuses close_range(CLOSE_RANGE_UNSHARE) (before 5.9). */
static int share_files = 1;
/* The flags the child gives close_range: a seam for the tests, which pass one the kernel refuses
 * to see the fallback taken. */
static unsigned int close_range_flags = SPAWN_CLOSE_RANGE_UNSHARE;

struct spawn_ctx {
    const char *path;
    char *const *argv;
    char *const *envp;
    int fds[3];
    const char *cwd;
    int reset[MAX_RESET];
    int nreset;
    int rl_which[MAX_RLIMITS];
    struct rlimit rl[MAX_RLIMITS];
    int nrl;
    long uid, gid;
    gid_t *groups;
    long ngroups; /* -1: leave the groups alone */
    sigset_t mask;
    int parked; /* fds 0-2 already hold the child's stdin, stdout, stderr: the table is shared */
    volatile int err;
    volatile int stage;
};

#if SPAWN_SUPPORTED
/* Inlined into the caller: the child resumes in the caller's frame and must not pass a `ret`
 * that reads a return address it shares with the waiting parent. */
static inline __attribute__((always_inline)) long raw_clone3(struct spawn_clone_args *args) {
#if defined(__x86_64__)
    long ret;
    register long a0 __asm__("rdi") = (long)args;
    register long a1 __asm__("rsi") = (long)sizeof(*args);
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SPAWN_SYS_CLONE3), "r"(a0), "r"(a1)
                     : "rcx", "r11", "memory");
    return ret;
#else
    register long x8 __asm__("x8") = SPAWN_SYS_CLONE3;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = (long)sizeof(*args);
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1) : "memory");
    return x0;
#endif
}

static void __attribute__((noreturn)) child_fail(struct spawn_ctx *c, int stage) {
    c->err = errno ? errno : EIO;
    c->stage = stage;
    syscall(SYS_exit, 127);
    for (;;) {
    }
}

static int in_reset(const struct spawn_ctx *c, int signum) {
    for (int i = 0; i < c->nreset; i++)
        if (c->reset[i] == signum) return 1;
    return 0;
}

/* In the child, below the parent's frame: system calls only, then exec or exit. */
static void __attribute__((noinline, noreturn)) child_exec(struct spawn_ctx *c) {
    /* A handler of the keeper must not run here (it would write the keeper's memory): every
     * caught signal goes back to its default while all are still blocked, as posix_spawn does;
     * the ones asked for (ignored by Python) too. */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        if (sigaction(sig, NULL, &sa) != 0) continue;
        if (sa.sa_handler == SIG_DFL) continue;
        if (sa.sa_handler == SIG_IGN && !in_reset(c, sig)) continue;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(sig, &sa, NULL);
    }
    /* A table of our own holding only 0-2: nothing else to copy, nothing else for exec to close. */
    if (c->parked && syscall(SPAWN_SYS_CLOSE_RANGE, 3U, ~0U, close_range_flags) != 0)
        child_fail(c, STAGE_FILES);
    if (setpgid(0, 0) != 0) child_fail(c, STAGE_PGID);
    int fds[3] = {c->fds[0], c->fds[1], c->fds[2]};
    for (int i = 0; i < 3 && !c->parked; i++) { /* a source among 0-2 must not be overwritten before its use */
        if (fds[i] < 3 && fds[i] != i) {
            fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
            if (fds[i] < 0) child_fail(c, STAGE_FDS);
        }
    }
    for (int i = 0; i < 3 && !c->parked; i++) {
        if (fds[i] == i) {
            if (fcntl(i, F_SETFD, 0) != 0) child_fail(c, STAGE_FDS);
        } else if (dup2(fds[i], i) < 0) {
            child_fail(c, STAGE_FDS);
        }
    }
    for (int i = 0; i < c->nrl; i++)
        if (setrlimit(c->rl_which[i], &c->rl[i]) != 0) child_fail(c, STAGE_RLIMIT);
    /* Raw calls: glibc's own would signal every thread of the keeper (setxid broadcast). */
    if (c->ngroups >= 0 && syscall(SYS_setgroups, c->ngroups, c->groups) != 0)
        child_fail(c, STAGE_USER);
    if (c->gid >= 0 && syscall(SYS_setresgid, c->gid, c->gid, c->gid) != 0)
        child_fail(c, STAGE_USER);
    if (c->uid >= 0 && syscall(SYS_setresuid, c->uid, c->uid, c->uid) != 0)
        child_fail(c, STAGE_USER);
    /* As the service's user, as supervisord and systemd do: a directory that user cannot enter
     * is a failed start, not a service running somewhere it could never have gone itself. */
    if (c->cwd != NULL && chdir(c->cwd) != 0) child_fail(c, STAGE_CWD);
    sigprocmask(SIG_SETMASK, &c->mask, NULL);
    execve(c->path, c->argv, c->envp);
    child_fail(c, STAGE_EXEC);
}
#endif

#if SPAWN_SUPPORTED
/* The keeper's own fds 0-2 while a child is made: a copy of each (-1: it was not open) and its
 * close-on-exec flag. */
struct parking {
    int saved[3];
    int flags[3];
};

/* Put the child's stdin, stdout and stderr on the keeper's own 0-2 for the time of the clone, so
 * that the child, sharing the table (CLONE_FILES), keeps only those: copying a table of thousands
 * of pipe ends into every child, then closing them all at its exec, is what a spawn costs most
 * once many services run. The keeper has one thread: nothing else uses 0-2 meanwhile. */
static void unpark(const struct parking *p);

static int park(struct parking *p, const int fds[3]) {
    int src[3];
    for (int i = 0; i < 3; i++)
        p->saved[i] = -1;
    for (int i = 0; i < 3; i++) {
        p->flags[i] = fcntl(i, F_GETFD);
        p->saved[i] = p->flags[i] < 0 ? -1 : fcntl(i, F_DUPFD_CLOEXEC, 3);
        if (p->flags[i] >= 0 && p->saved[i] < 0) goto undo;
    }
    for (int i = 0; i < 3; i++) {
        src[i] = fds[i] < 0 ? -1 : fds[i] < 3 ? p->saved[fds[i]] : fds[i];
        if (src[i] < 0) goto undo; /* a source that is not open: the usual path says EBADF */
    }
    for (int i = 0; i < 3; i++) {
        if (dup2(src[i], i) < 0) {
            unpark(p);
            return 0;
        }
    }
    return 1;
undo:
    for (int i = 0; i < 3; i++)
        if (p->saved[i] >= 0) close(p->saved[i]);
    return 0;
}

static void unpark(const struct parking *p) {
    for (int i = 0; i < 3; i++) {
        if (p->saved[i] >= 0) {
            dup2(p->saved[i], i);
            if (p->flags[i] & FD_CLOEXEC) fcntl(i, F_SETFD, p->flags[i]);
            close(p->saved[i]);
        } else {
            close(i);
        }
    }
}
#endif

/* A list of str/bytes -> a NULL-terminated array of char*, kept alive by `keep` (a list). */
static char **string_array(PyObject *seq, PyObject *keep, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *encoded = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &encoded)) goto fail;
        if (PyList_Append(keep, encoded) != 0) {
            Py_DECREF(encoded);
            goto fail;
        }
        out[i] = PyBytes_AS_STRING(encoded);
        Py_DECREF(encoded); /* `keep` holds it */
    }
    Py_DECREF(fast);
    return out;
fail:
    PyMem_Free(out);
    Py_DECREF(fast);
    return NULL;
}

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, env, cgroup_fd, stdin, stdout, stderr, cwd, reset, rlimits, uid, gid, groups)"
" -> pid\n\n"
"Start `path` with `argv` and `env` (a list of 'NAME=value') in a process group of its own,\n"
"inside the cgroup v2 directory open as `cgroup_fd` (-1: the keeper's own), its fds 0-2 on\n"
"`stdin`, `stdout`, `stderr`, the signals `reset` at their default, the (resource, soft,\n"
"hard) `rlimits` set, then `groups` (None: unchanged), `gid` and `uid` (-1: unchanged), then\n"
"in `cwd` (None: the keeper's), entered as that user. Raises OSError as the step that failed\n"
"did (the filename is `cwd` when the directory change failed, else `path`).");

static PyObject *spawn(PyObject *self, PyObject *args) {
    (void)self;
#if !SPAWN_SUPPORTED
    (void)args;
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#else
    PyObject *path_obj, *argv_obj, *env_obj, *cwd_obj, *reset_obj, *rl_obj, *groups_obj;
    int cgroup_fd, in_fd, out_fd, err_fd;
    long uid, gid;
    if (!PyArg_ParseTuple(args, "O&OOiiiiOOOllO:spawn", PyUnicode_FSConverter, &path_obj,
                          &argv_obj, &env_obj, &cgroup_fd, &in_fd, &out_fd, &err_fd, &cwd_obj,
                          &reset_obj, &rl_obj, &uid, &gid, &groups_obj))
        return NULL;

    struct spawn_ctx c;
    memset(&c, 0, sizeof c);
    PyObject *keep = PyList_New(0);
    PyObject *cwd_bytes = NULL, *result = NULL;
    char **argv = NULL, **envp = NULL;
    gid_t *groups = NULL;
    if (keep == NULL) goto done;
    if ((argv = string_array(argv_obj, keep, "argv must be a list")) == NULL) goto done;
    if (argv[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        goto done;
    }
    if ((envp = string_array(env_obj, keep, "env must be a list")) == NULL) goto done;
    if (cwd_obj != Py_None && !PyUnicode_FSConverter(cwd_obj, &cwd_bytes)) goto done;

    PyObject *fast = PySequence_Fast(reset_obj, "reset must be a sequence of signals");
    if (fast == NULL) goto done;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast) && c.nreset < MAX_RESET; i++) {
        long signum = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (signum == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            goto done;
        }
        c.reset[c.nreset++] = (int)signum;
    }
    Py_DECREF(fast);

    fast = PySequence_Fast(rl_obj, "rlimits must be a sequence of (resource, soft, hard)");
    if (fast == NULL) goto done;
    if (PySequence_Fast_GET_SIZE(fast) > MAX_RLIMITS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many rlimits");
        goto done;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        int which;
        unsigned long long soft, hard;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iKK", &which, &soft, &hard)) {
            Py_DECREF(fast);
            goto done;
        }
        c.rl_which[c.nrl] = which;
        c.rl[c.nrl].rlim_cur = (rlim_t)soft;
        c.rl[c.nrl].rlim_max = (rlim_t)hard;
        c.nrl++;
    }
    Py_DECREF(fast);

    c.ngroups = -1;
    if (groups_obj != Py_None) {
        fast = PySequence_Fast(groups_obj, "groups must be a sequence of gids");
        if (fast == NULL) goto done;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
        groups = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
        if (groups == NULL) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            long g = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
            if (g == -1 && PyErr_Occurred()) {
                Py_DECREF(fast);
                goto done;
            }
            groups[i] = (gid_t)g;
        }
        Py_DECREF(fast);
        c.groups = groups;
        c.ngroups = (long)n;
    }

    c.path = PyBytes_AS_STRING(path_obj);
    c.argv = argv;
    c.envp = envp;
    c.fds[0] = in_fd;
    c.fds[1] = out_fd;
    c.fds[2] = err_fd;
    c.cwd = cwd_bytes == NULL ? NULL : PyBytes_AS_STRING(cwd_bytes);
    c.uid = uid;
    c.gid = gid;

    struct spawn_clone_args cargs;
    memset(&cargs, 0, sizeof cargs);
    cargs.flags = SPAWN_CLONE_VM | SPAWN_CLONE_VFORK;
    if (cgroup_fd >= 0) {
        cargs.flags |= SPAWN_CLONE_INTO_CGROUP;
        cargs.cgroup = (uint64_t)cgroup_fd;
    }
    cargs.exit_signal = SIGCHLD;

    sigset_t all;
    sigfillset(&all);
    long pid;
    int saved_errno;
    struct parking parking;
again:
    c.parked = share_files && park(&parking, c.fds);
    cargs.flags = c.parked ? cargs.flags | SPAWN_CLONE_FILES : cargs.flags & ~SPAWN_CLONE_FILES;
    c.stage = STAGE_NONE;
    c.err = 0;
    /* Parked, the GIL is kept: no other Python thread may write to 0-2 meanwhile. */
    PyThreadState *released = c.parked ? NULL : PyEval_SaveThread();
    pthread_sigmask(SIG_SETMASK, &all, &c.mask);
    pid = raw_clone3(&cargs);
    if (pid == 0) child_exec(&c);
    pthread_sigmask(SIG_SETMASK, &c.mask, NULL);
    if (c.parked) unpark(&parking);
    if (released != NULL) PyEval_RestoreThread(released);
    if (pid > 0 && c.stage == STAGE_FILES) { /* a kernel before 5.9: the usual way from now on */
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) {
        }
        share_files = 0;
        goto again;
    }
    if (pid < 0) {
        saved_errno = (int)-pid;
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (c.stage != STAGE_NONE) { /* it exited without exec: never a service, reap it here */
        int status;
        saved_errno = c.err;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) {
        }
        errno = saved_errno;
        PyErr_SetFromErrnoWithFilenameObject(
            PyExc_OSError, c.stage == STAGE_CWD ? cwd_obj : PyTuple_GET_ITEM(args, 0));
        goto done;
    }
    result = PyLong_FromLong(pid);
done:
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(groups);
    Py_XDECREF(cwd_bytes);
    Py_XDECREF(keep);
    Py_DECREF(path_obj);
    return result;
#endif
}

/* The two other libc calls the keeper needs, here so that it loads no ctypes (half a MB). */
static PyObject *become_subreaper(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0);
}

static PyObject *trim_heap(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    malloc_trim(0);
    Py_RETURN_NONE;
}

static PyObject *shares_files(PyObject *self, PyObject *args) {
    (void)self;
    unsigned int flags = close_range_flags;
    if (!PyArg_ParseTuple(args, "|I:_shares_files", &flags)) return NULL;
    close_range_flags = flags;
    return PyBool_FromLong(share_files);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"_shares_files", shares_files, METH_VARARGS,
     "_shares_files([close_range_flags]) -> whether children share the descriptor table until "
     "close_range unshares it (False once the kernel refused); for the tests."},
    {"become_subreaper", become_subreaper, METH_NOARGS,
     "Make orphaned descendants come back to this process to be reaped; True if done."},
    {"trim_heap", trim_heap, METH_NOARGS, "Hand free heap memory back to the OS (malloc_trim)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spawn",
    "A child started inside its cgroup without copying the keeper (clone3, CLONE_VM).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "SUPPORTED", SPAWN_SUPPORTED) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
