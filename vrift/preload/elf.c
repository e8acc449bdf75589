/*
 * elf.c — what an executable's ELF headers tell before it runs (docs/cache.md,
 * "Uncacheable"): a program this library cannot see.
 *
 *   - no PT_INTERP: statically linked, the preload library is not loaded at all;
 *   - a Go program (a `.go.buildinfo`, `.gopclntab` or `.note.go.buildid` section): the Go
 *     runtime makes its system calls itself, also when it is linked against libc (cgo), so
 *     its reads never reach an interposer.
 *
 * Read with raw pread()s of the ELF header, the program headers and, for a dynamic ELF, the
 * section headers and their name table: a few syscalls per exec, only while recording.
 */
#include "vrift_preload.h"

#include <elf.h>
#include <fcntl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SHSTR_MAX 8192 /* section names beyond this are not looked at */

static int pread_all(int fd, void *b, long n, off_t off) {
    return syscall(SYS_pread64, fd, b, n, off) == n ? 0 : -1;
}

static int has_interp(int fd, const Elf64_Ehdr *eh) {
    Elf64_Phdr ph[64];
    for (unsigned done = 0; done < eh->e_phnum;) {
        unsigned k = eh->e_phnum - done < 64 ? eh->e_phnum - done : 64;
        if (pread_all(fd, ph, (long)(k * sizeof(Elf64_Phdr)), (off_t)(eh->e_phoff + done * sizeof(Elf64_Phdr))) != 0)
            return 0;
        for (unsigned i = 0; i < k; i++)
            if (ph[i].p_type == PT_INTERP) return 1;
        done += k;
    }
    return 0;
}

static int go_section(int fd, const Elf64_Ehdr *eh) {
    if (eh->e_shentsize != sizeof(Elf64_Shdr) || eh->e_shnum == 0 || eh->e_shnum > 4096 ||
        eh->e_shstrndx >= eh->e_shnum)
        return 0;
    Elf64_Shdr strtab;
    if (pread_all(fd, &strtab, sizeof strtab, (off_t)(eh->e_shoff + eh->e_shstrndx * sizeof(Elf64_Shdr))) != 0)
        return 0;
    static const char *const marks[] = {".go.buildinfo", ".gopclntab", ".note.go.buildid"};
    char names[SHSTR_MAX];
    long n = strtab.sh_size < SHSTR_MAX ? (long)strtab.sh_size : SHSTR_MAX;
    if (n <= 0 || syscall(SYS_pread64, fd, names, n, (off_t)strtab.sh_offset) != n) return 0;
    names[n - 1] = '\0';
    Elf64_Shdr sh[64];
    for (unsigned done = 0; done < eh->e_shnum;) {
        unsigned k = eh->e_shnum - done < 64 ? eh->e_shnum - done : 64;
        if (pread_all(fd, sh, (long)(k * sizeof(Elf64_Shdr)), (off_t)(eh->e_shoff + done * sizeof(Elf64_Shdr))) != 0)
            return 0;
        for (unsigned i = 0; i < k; i++) {
            if (sh[i].sh_name >= (Elf64_Word)n) continue;
            const char *name = names + sh[i].sh_name;
            for (size_t m = 0; m < sizeof marks / sizeof marks[0]; m++)
                if (strcmp(name, marks[m]) == 0) return 1;
        }
        done += k;
    }
    return 0;
}

/* NULL: a dynamic ELF the library sees, or not an ELF (a script), or unreadable; else why the
 * program's file accesses cannot be seen. */
const char *vrift_elf_invisible(const char *path) {
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return NULL;
    Elf64_Ehdr eh;
    const char *why = NULL;
    if (pread_all(fd, &eh, sizeof eh, 0) == 0 && memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0) {
        if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 ||
            eh.e_phnum > 512)
            why = "static binary"; /* not what this library can run in: as good as static */
        else if (!has_interp(fd, &eh))
            why = "static binary";
        else if (go_section(fd, &eh))
            why = "Go binary (raw system calls)";
    }
    syscall(SYS_close, fd);
    return why;
}
