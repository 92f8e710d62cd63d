/* cairn-jepsen's LD_PRELOAD shim for one member process: a skewed, drifting clock, failing
 * fsyncs, and a journal of what is durable. Built by the harness with the system's C compiler (see shim.rs); it acts only on
 * calls that go through libc's dynamic symbols (Rust and C++ do; Go's runtime does not).
 *
 *   CAIRN_JEPSEN_CLOCK_OFFSET_MS     added to the wall clock (CLOCK_REALTIME*, gettimeofday, time)
 *   CAIRN_JEPSEN_CLOCK_RATE          every clock runs this fast from the moment the process started
 *                                    (wall, monotonic, boottime); > 0, 1 = real speed
 *   CAIRN_JEPSEN_FSYNC_FAIL_FILE     while this file exists, fsync and fdatasync fail with EIO
 *   CAIRN_JEPSEN_FSYNC_TRIPPED_FILE  created when an fsync or fdatasync has been failed
 *   CAIRN_JEPSEN_SYNC_JOURNAL        appends a line per file created ("c SIZE PATH": its size then)
 *                                    and per successful fsync or fdatasync ("s SIZE PATH": its size
 *                                    when the sync began, all of which is durable after it), so
 *                                    the harness can cut every file back to what was synced
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CLOCK_IDS 8
#define NS_PER_S 1000000000LL

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*sync_fn)(int);
typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static clock_gettime_fn real_clock_gettime;
static sync_fn real_fsync;
static sync_fn real_fdatasync;
static open_fn real_open;
static open_fn real_open64;
static openat_fn real_openat;
static openat_fn real_openat64;
static int journal_fd = -1;
static int64_t base_ns[CLOCK_IDS];
static int64_t offset_ns;
static double rate = 1.0;
static const char *fsync_fail_file;
static const char *fsync_tripped_file;

static int64_t to_ns(const struct timespec *ts) {
    return (int64_t)ts->tv_sec * NS_PER_S + ts->tv_nsec;
}

/* Wall, monotonic and boot clocks; not the CPU-time clocks. */
static int scaled(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_MONOTONIC || id == CLOCK_MONOTONIC_RAW ||
           id == CLOCK_REALTIME_COARSE || id == CLOCK_MONOTONIC_COARSE || id == CLOCK_BOOTTIME;
}

static void resolve(void) {
    if (!real_clock_gettime) real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    if (!real_fsync) real_fsync = (sync_fn)dlsym(RTLD_NEXT, "fsync");
    if (!real_fdatasync) real_fdatasync = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
    if (!real_open) real_open = (open_fn)dlsym(RTLD_NEXT, "open");
    if (!real_open64) real_open64 = (open_fn)dlsym(RTLD_NEXT, "open64");
    if (!real_openat) real_openat = (openat_fn)dlsym(RTLD_NEXT, "openat");
    if (!real_openat64) real_openat64 = (openat_fn)dlsym(RTLD_NEXT, "openat64");
}

__attribute__((constructor)) static void cairn_jepsen_shim_init(void) {
    const char *value;
    resolve();
    if ((value = getenv("CAIRN_JEPSEN_CLOCK_OFFSET_MS"))) offset_ns = strtoll(value, NULL, 10) * 1000000LL;
    if ((value = getenv("CAIRN_JEPSEN_CLOCK_RATE"))) rate = strtod(value, NULL);
    if (!(rate > 0.0)) rate = 1.0;
    fsync_fail_file = getenv("CAIRN_JEPSEN_FSYNC_FAIL_FILE");
    fsync_tripped_file = getenv("CAIRN_JEPSEN_FSYNC_TRIPPED_FILE");
    if ((value = getenv("CAIRN_JEPSEN_SYNC_JOURNAL")))
        journal_fd = real_open(value, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    for (clockid_t id = 0; id < CLOCK_IDS; id++) {
        struct timespec ts;
        if (scaled(id) && real_clock_gettime(id, &ts) == 0) base_ns[id] = to_ns(&ts);
    }
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    resolve();
    int result = real_clock_gettime(id, ts);
    if (result != 0 || id < 0 || id >= CLOCK_IDS || !scaled(id)) return result;
    int64_t now = to_ns(ts);
    int64_t t = base_ns[id] + (int64_t)((double)(now - base_ns[id]) * rate);
    if (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE) t += offset_ns;
    ts->tv_sec = (time_t)(t / NS_PER_S);
    ts->tv_nsec = (long)(t % NS_PER_S);
    return 0;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (time_t)-1;
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}

/* Whether this sync must fail; if so, notes it and sets errno. */
static int failing(void) {
    if (!fsync_fail_file || access(fsync_fail_file, F_OK) != 0) return 0;
    if (fsync_tripped_file) {
        int fd = open(fsync_tripped_file, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd >= 0) close(fd);
    }
    errno = EIO;
    return 1;
}

/* Appends "KIND SIZE PATH" for regular file `fd` to the journal, if there is one. One write(2)
 * on an O_APPEND file: lines from different threads do not interleave. */
static void journal(char kind, int fd, off_t size) {
    char link[64], path[4096], line[4200];
    if (journal_fd < 0) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    if (len <= 0) return;
    path[len] = 0;
    int n = snprintf(line, sizeof line, "%c %lld %s\n", kind, (long long)size, path);
    if (n > 0 && n < (int)sizeof line) {
        ssize_t written = write(journal_fd, line, (size_t)n);
        (void)written;
    }
}

/* The size of regular file `fd`, or -1 (a directory, or an error). */
static off_t file_size(int fd) {
    struct stat st;
    if (journal_fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return -1;
    return st.st_size;
}

static int synced(int fd, sync_fn real) {
    resolve();
    if (failing()) return -1;
    off_t size = file_size(fd);
    int result = real(fd);
    if (result == 0 && size >= 0) journal('s', fd, size);
    return result;
}

int fsync(int fd) { return synced(fd, real_fsync); }

int fdatasync(int fd) { return synced(fd, real_fdatasync); }

/* Notes a file opened with O_CREAT: whatever it held then counts as durable. */
static int opened(int fd, int flags) {
    if (fd >= 0 && (flags & O_CREAT)) {
        off_t size = file_size(fd);
        if (size >= 0) journal('c', fd, size);
    }
    return fd;
}

static mode_t mode_of(int flags, va_list args) {
    return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(args, mode_t) : 0;
}

int open(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_of(flags, args);
    va_end(args);
    resolve();
    return opened(real_open(path, flags, mode), flags);
}

int open64(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_of(flags, args);
    va_end(args);
    resolve();
    return opened(real_open64(path, flags, mode), flags);
}

int openat(int dir, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_of(flags, args);
    va_end(args);
    resolve();
    return opened(real_openat(dir, path, flags, mode), flags);
}

int openat64(int dir, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_of(flags, args);
    va_end(args);
    resolve();
    return opened(real_openat64(dir, path, flags, mode), flags);
}
