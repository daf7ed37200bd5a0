/* test_temp_file.c - output files written under a temporary name and renamed
 * into place (tools/support/temp_path.h), directly and through report_write:
 * a commit replaces the file whole; a failed write, a discard or a folder
 * that is not there leaves the final path as it was and no temporary behind;
 * a symbolic link is written through (a dangling one creates its target), a
 * FIFO (a special file, as /dev/null) in place, and /dev/fd/N through the
 * descriptor at its offset (a `>>` log keeps what it held).
 * Run: ctest -R test_temp_file (from the build folder's ctest). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "report.h"
#include "temp_path.h"
#include "test_util.h"

static char dir[256];

static void path_for(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

/* The file's whole text (malloc'd), or NULL where it cannot be read. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = calloc(1, 4096);
    size_t got = text ? fread(text, 1, 4095, f) : 0;
    fclose(f);
    if (text) text[got] = '\0';
    return text;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot create %s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void expect_text(const char *what, const char *path, const char *expected) {
    char *text = read_text(path);
    CHECK_MSG(text && strcmp(text, expected) == 0, "%s: %s holds '%s', expected '%s'", what, path,
              text ? text : "(nothing)", expected);
    free(text);
}

/* Nothing named PATH.tmp.* is left. */
static void expect_no_temporary(const char *what, const char *path) {
    char *tmp = temp_path_for(path);
    CHECK(tmp != NULL);
    if (!tmp) return;
    CHECK_MSG(access(tmp, F_OK) != 0, "%s: %s was left behind", what, tmp);
    free(tmp);
}

static void test_commit_replaces(void) {
    char path[512], err[256] = "";
    path_for(path, sizeof path, "out.txt");
    write_text(path, "old");
    temp_file t;
    CHECK(temp_file_create(&t, path, err, sizeof err) == 0);
    CHECK(temp_file_write(&t, "new ", 4) && temp_file_write(&t, "text", 4));
    expect_text("before the commit", path, "old");
    CHECK_MSG(temp_file_commit(&t, path, err, sizeof err) == 0, "commit: %s", err);
    expect_text("after the commit", path, "new text");
    expect_no_temporary("commit", path);
}

static void test_failed_write_keeps_old(void) {
    char path[512], err[256] = "";
    path_for(path, sizeof path, "kept.txt");
    write_text(path, "old");
    temp_file t;
    CHECK(temp_file_create(&t, path, err, sizeof err) == 0);
    temp_file_write(&t, "half", 4);
    temp_file_failed(&t, ENOSPC);
    temp_file_failed(&t, EIO); /* the first failure is the one reported */
    CHECK(temp_file_commit(&t, path, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "kept.txt: write failed") && strstr(err, strerror(ENOSPC)),
              "message: '%s'", err);
    expect_text("after a failed write", path, "old");
    expect_no_temporary("failed write", path);
}

static void test_discard(void) {
    char path[512], err[256] = "";
    path_for(path, sizeof path, "discarded.txt");
    temp_file t;
    CHECK(temp_file_create(&t, path, err, sizeof err) == 0);
    temp_file_write(&t, "never", 5);
    temp_file_discard(&t);
    temp_file_discard(&t); /* a spent file is left alone */
    CHECK_MSG(access(path, F_OK) != 0, "a discarded file appeared at %s", path);
    expect_no_temporary("discard", path);
}

static void test_missing_folder(void) {
    char path[512], err[256] = "";
    path_for(path, sizeof path, "no-such-folder/out.txt");
    temp_file t;
    CHECK(temp_file_create(&t, path, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "out.txt: cannot create") && strstr(err, strerror(ENOENT)),
              "message: '%s'", err);
    CHECK(t.file == NULL && t.tmp_path == NULL);
}

/* A link stays a link and the file it names gets the new text: a rename over
 * the link would cut it off from its target. */
static void test_symbolic_link_is_followed(void) {
    char target[512], link[512], err[256] = "";
    path_for(target, sizeof target, "target.txt");
    path_for(link, sizeof link, "link.txt");
    write_text(target, "old");
    CHECK(symlink("target.txt", link) == 0);
    temp_file t;
    CHECK(temp_file_create(&t, link, err, sizeof err) == 0);
    CHECK(temp_file_write(&t, "new", 3));
    CHECK_MSG(temp_file_commit(&t, link, err, sizeof err) == 0, "commit: %s", err);
    struct stat st;
    CHECK_MSG(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "%s is no longer a link", link);
    expect_text("the link's target", target, "new");
    expect_no_temporary("link", target);
    expect_no_temporary("link", link);
    unlink(link);
    unlink(target);
}

static void test_dangling_link_creates_its_target(void) {
    char target[512], link[512], err[256] = "";
    path_for(target, sizeof target, "created.txt");
    path_for(link, sizeof link, "dangling.txt");
    CHECK(symlink("created.txt", link) == 0);
    temp_file t;
    CHECK(temp_file_create(&t, link, err, sizeof err) == 0);
    CHECK(temp_file_write(&t, "made", 4));
    CHECK_MSG(temp_file_commit(&t, link, err, sizeof err) == 0, "commit: %s", err);
    struct stat st;
    CHECK_MSG(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "%s is no longer a link", link);
    expect_text("the dangling link's target", target, "made");
    unlink(link);
    unlink(target);
}

/* /dev/fd/N (as /dev/stdout, under `>> log`) is written through descriptor
 * N: reopening the file it names would truncate it. */
static void test_descriptor_is_written_at_its_offset(void) {
    char log[512], named[64], err[256] = "";
    path_for(log, sizeof log, "log.txt");
    write_text(log, "before\n");
    int fd = open(log, O_WRONLY | O_APPEND);
    CHECK(fd >= 0);
    if (fd < 0) return;
    snprintf(named, sizeof named, "/dev/fd/%d", fd);
    CHECK(temp_path_descriptor(named) == fd && temp_path_descriptor("/dev/stdout") == 1 &&
          temp_path_descriptor("/proc/self/fd/2") == 2 && temp_path_descriptor("/dev/fd/x") == -1);
    temp_file t;
    CHECK_MSG(temp_file_create(&t, named, err, sizeof err) == 0, "create: %s", err);
    CHECK(temp_file_write(&t, "after\n", 6));
    CHECK_MSG(temp_file_commit(&t, named, err, sizeof err) == 0, "commit: %s", err);
    CHECK_MSG(fcntl(fd, F_GETFD) != -1, "the commit closed descriptor %d", fd);
    close(fd);
    expect_text("the log", log, "before\nafter\n");
    expect_no_temporary("descriptor", log);
    unlink(log);
}

/* A FIFO stands for the special files (/dev/null, /dev/stdout) that a rename
 * would replace with a regular file: the bytes go into it, and it stays a
 * FIFO. */
static void test_special_file_is_written_in_place(void) {
    char fifo[512], err[256] = "";
    path_for(fifo, sizeof fifo, "fifo");
    CHECK(mkfifo(fifo, 0600) == 0);
    /* A reader must be there, or opening the FIFO to write would wait. */
    int reader = open(fifo, O_RDONLY | O_NONBLOCK);
    CHECK(reader >= 0);
    if (reader < 0) return;
    temp_file t;
    CHECK_MSG(temp_file_create(&t, fifo, err, sizeof err) == 0, "create: %s", err);
    CHECK(t.tmp_path == NULL);
    CHECK(temp_file_write(&t, "through", 7));
    CHECK_MSG(temp_file_commit(&t, fifo, err, sizeof err) == 0, "commit: %s", err);
    char got[16] = "";
    CHECK(read(reader, got, sizeof got - 1) == 7 && strcmp(got, "through") == 0);
    close(reader);
    struct stat st;
    CHECK_MSG(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode), "%s is no longer a FIFO", fifo);
    expect_no_temporary("FIFO", fifo);
    unlink(fifo);
}

static void test_report_write(void) {
    char path[512], err[256] = "";
    path_for(path, sizeof path, "report.json");
    write_text(path, "old");
    report *r = report_create("test_temp_file");
    CHECK(r != NULL);
    if (!r) return;
    report_set_number(r, "totals", "images", 3);
    char *text = report_to_string(r);
    CHECK(text != NULL);
    CHECK_MSG(report_write(r, path, err, sizeof err) == 0, "report_write: %s", err);
    /* The report's text and a final newline. */
    char *expected = malloc(strlen(text) + 2);
    sprintf(expected, "%s\n", text);
    expect_text("report", path, expected);
    expect_no_temporary("report", path);

    char missing[512];
    path_for(missing, sizeof missing, "no-such-folder/report.json");
    CHECK(report_write(r, missing, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "report.json: cannot create"), "message: '%s'", err);
    CHECK(access(missing, F_OK) != 0);
    free(expected);
    free(text);
    report_free(r);
}

int main(void) {
    if (test_make_temp_dir(dir, sizeof dir, "test_temp_file") != 0) return 1;
    test_commit_replaces();
    test_failed_write_keeps_old();
    test_discard();
    test_missing_folder();
    test_symbolic_link_is_followed();
    test_special_file_is_written_in_place();
    test_dangling_link_creates_its_target();
    test_descriptor_is_written_at_its_offset();
    test_report_write();
    test_remove_temp_dir(dir);
    return test_finish("test_temp_file");
}
