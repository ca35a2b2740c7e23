#!/usr/bin/python3
"""Checks an Apptainer definition file without Apptainer (Debian 12 packages none).

    check_deffile.py FILE.def              exit 0 if FILE passes, 1 with one line per problem
    check_deffile.py --self-test FILE.def  breaks FILE in known ways; exit 0 if every broken
                                           copy is caught and FILE itself passes

Structure, as Apptainer parses it: the header is every line before the first '%section' line,
each 'Key: value' with a known key, Bootstrap first; sections are known names, each at most once
(Apptainer silently concatenates repeats). Content: every shell section (%setup, %post, %test,
%runscript, %environment, ...) parses with `bash -n` and, unless it asks for bash with
'-c /bin/bash', with `sh -n` too, the shell Apptainer uses; %labels lines are 'KEY value';
%files sources exist in the build context (the repository root: `apptainer build` runs there).
This project's rules: the sections llt.def needs are present, the base image is pinned to an
exact tag, %post builds with CMAKE_PREFIX_PATH=/opt/libtorch and -DLLT_GIT_SHA (the copied tree is
partial: CMake's git status would call it dirty), compares nccl.h's NCCL_VERSION_CODE with
LibTorch's NCCL, %test runs ctest, and the LibTorch it downloads (LIBTORCH_VERSION, its URL and
the llt.libtorch label) is the version CI builds and tests (torch== in scripts/cuda-wheels.txt),
with a CUDA suffix: one LibTorch API on the cluster, in CI and on the GPU check.
"""
import os
import re
import subprocess
import sys
import tempfile

HEADER_KEYS = {"bootstrap", "from", "stage", "includecmd", "mirrorurl", "updateurl", "osversion",
               "include", "library", "registry", "namespace", "fingerprints", "setopt",
               "product", "user", "regcode", "productpgp", "registerurl", "modules", "confurl"}
SECTIONS = {"help", "setup", "files", "labels", "environment", "pre", "post", "runscript",
            "test", "startscript", "arguments"}
APP_SECTIONS = {"appinstall", "applabels", "appfiles", "appenv", "apptest", "apphelp", "apprun",
                "appstart"}
SHELL_SECTIONS = {"setup", "pre", "post", "runscript", "test", "startscript", "environment",
                  "appinstall", "appenv", "apptest", "apprun", "appstart"}
# Agents that take their image from a registry or a file, and so need From:.
NEEDS_FROM = {"docker", "library", "shub", "oras", "localimage", "docker-daemon",
              "docker-archive", "oci", "oci-archive"}
AGENTS = NEEDS_FROM | {"yum", "dnf", "zypper", "debootstrap", "arch", "busybox", "scratch"}
REQUIRED = ["help", "labels", "files", "environment", "post", "test", "runscript"]


def parse(text):
    """Splits a definition into header [(line, key, value)] and sections [(line, name, args,
    body)]; a header line without 'Key:' gets key None."""
    header, sections = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        words = line.split()
        if words and words[0].startswith("%"):
            sections.append((number, words[0][1:].lower(), words[1:], []))
        elif sections:
            sections[-1][3].append(line)
        elif line.strip() and not line.strip().startswith("#"):
            key, colon, value = line.partition(":")
            header.append((number, key.strip().lower() if colon else None,
                           value.split("#")[0].strip()))
    return header, sections


def syntax_errors(shell, body, first_line):
    """The shell's complaint about `body` (`shell -n`) with line numbers of the file, whose line
    `first_line` is the body's first; None if it parses."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
        script.write(body + "\n")
        script.flush()
        result = subprocess.run([shell, "-n", script.name], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    # bash says "FILE: line N: ...", dash "FILE: N: ..."
    message = re.sub(re.escape(script.name) + r": (?:line )?(\d+):",
                     lambda m: f"line {int(m.group(1)) + first_line - 1}:", result.stderr)
    return message.strip().replace("\n", " / ")


def check_header(header, problems):
    keys = {}
    for number, key, value in header:
        if key is None:
            problems.append((number, "header line is not 'Key: value'"))
        elif key not in HEADER_KEYS:
            problems.append((number, f"unknown header key '{key}'"))
        else:
            keys.setdefault(key, (number, value))
    if not header or header[0][1] != "bootstrap":
        problems.append((1, "the definition must start with a 'Bootstrap:' line"))
    agent = keys.get("bootstrap", (0, ""))[1].lower()
    if "bootstrap" in keys and agent not in AGENTS:
        problems.append((keys["bootstrap"][0], f"unknown Bootstrap agent '{agent}'"))
    if agent in NEEDS_FROM and not keys.get("from", (0, ""))[1]:
        problems.append((1, f"Bootstrap: {agent} needs a 'From:' line"))
    image = keys.get("from", (0, ""))[1]
    if image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        problems.append((keys["from"][0], f"From: {image} is not pinned to an exact tag"))


def check_sections(sections, context, problems):
    seen = {}
    for number, name, args, body in sections:
        if name in APP_SECTIONS:
            if not args:
                problems.append((number, f"%{name} needs an app name"))
            key = f"{name} {args[0] if args else ''}"
        elif name in SECTIONS:
            key = name
        else:
            problems.append((number, f"unknown section %{name}"))
            continue
        if key in seen:
            problems.append((number, f"%{key} again (first at line {seen[key]}): Apptainer "
                                     "would silently join them"))
        seen.setdefault(key, number)
        text = "\n".join(body)
        if name in SHELL_SECTIONS and text.strip():
            wants_bash = "-c" in args and args.index("-c") + 1 < len(args) and \
                os.path.basename(args[args.index("-c") + 1]) == "bash"
            for shell in ["bash"] if wants_bash else ["bash", "sh"]:
                error = syntax_errors(shell, text, number + 1)
                if error:
                    problems.append((number, f"%{name}: {shell} -n: {error}"))
        for offset, line in enumerate(body, start=1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if name in ("labels", "applabels") and len(words) < 2:
                problems.append((number + offset, f"%{name}: label '{words[0]}' has no value"))
            if name in ("files", "appfiles") and not os.path.exists(
                    os.path.join(context, words[0])):
                problems.append((number + offset, f"%{name}: '{words[0]}' not found in the "
                                                  f"build context {context}"))
    for name in REQUIRED:
        if name not in seen:
            problems.append((1, f"no %{name} section"))
    bodies = {}
    for _, name, _, body in sections:
        bodies[name] = bodies.get(name, "") + "\n".join(body) + "\n"
    if "post" in bodies and "CMAKE_PREFIX_PATH=/opt/libtorch" not in bodies["post"]:
        problems.append((seen["post"], "%post does not build with "
                                       "-DCMAKE_PREFIX_PATH=/opt/libtorch"))
    if "post" in bodies and not re.search(r"-DLLT_GIT_SHA=\S", bodies["post"]):
        problems.append((seen["post"], "%post does not pass -DLLT_GIT_SHA to CMake"))
    if "post" in bodies and "NCCL_VERSION_CODE" not in bodies["post"]:
        problems.append((seen["post"], "%post does not compare nccl.h's NCCL_VERSION_CODE with "
                                       "LibTorch's NCCL"))
    if "test" in bodies and not re.search(r"\bctest\b", bodies["test"]):
        problems.append((seen["test"], "%test does not run ctest"))
    if "post" in bodies:
        check_libtorch_version(bodies, seen, context, problems)


def check_libtorch_version(bodies, seen, context, problems):
    """LIBTORCH_VERSION, its URL and label name the torch version CI pins."""
    try:
        with open(os.path.join(context, "scripts", "cuda-wheels.txt"), encoding="utf-8") as f:
            pinned = re.search(r"^torch==(\S+)", f.read(), re.M).group(1)
    except (OSError, AttributeError):
        problems.append((seen["post"], "scripts/cuda-wheels.txt pins no torch== version"))
        return
    version = re.search(r"^\s*LIBTORCH_VERSION=(\S+)", bodies["post"], re.M)
    if not version or not re.fullmatch(re.escape(pinned) + r"\+cu\d+", version.group(1)):
        problems.append((seen["post"], f"%post LIBTORCH_VERSION "
                                       f"{version.group(1) if version else '(none)'} is not "
                                       f"{pinned}+cuNNN, the torch CI tests"))
        return
    url_version = version.group(1).replace("+", "%2B")
    url = re.search(r"^\s*LIBTORCH_URL=(\S+)", bodies["post"], re.M)
    if not url or url_version not in url.group(1):
        problems.append((seen["post"], f"%post LIBTORCH_URL does not download {version.group(1)}"))
    if not re.search(r"^\s*llt\.libtorch " + re.escape(version.group(1)) + r"\s*$",
                     bodies.get("labels", ""), re.M):
        problems.append((seen.get("labels", 1), f"label llt.libtorch is not {version.group(1)}"))


def check(path, context=None):
    """[(line, problem)] for the definition at `path`; empty if it passes."""
    context = context or os.path.dirname(os.path.dirname(os.path.abspath(path)))
    with open(path, encoding="utf-8") as f:
        header, sections = parse(f.read())
    problems = []
    check_header(header, problems)
    check_sections(sections, context, problems)
    return sorted(problems)


def report(path, problems):
    for number, problem in problems:
        print(f"{path}:{number}: {problem}")
    if not problems:
        print(f"{path}: OK")


# Broken copies for --self-test: (what breaks, edit of the text, words the problem must contain).
def _sub(pattern, replacement):
    return lambda text: re.sub(pattern, replacement, text, count=1, flags=re.M)


BREAKAGES = [
    ("no Bootstrap line", _sub(r"^Bootstrap:.*\n", ""), "Bootstrap"),
    ("no From line", _sub(r"^From:.*\n", ""), "needs a 'From:'"),
    ("unpinned base image", _sub(r"^From:.*$", "From: ubuntu:latest"), "not pinned"),
    ("unknown header key", _sub(r"^(From:.*)$", r"\1\nFrom2: x"), "unknown header key"),
    ("misspelt section", _sub(r"^%post\b", "%postt"), "unknown section %postt"),
    ("%post unterminated if", _sub(r"^%test$", "    if true; then\n%test"), "%post: bash -n"),
    ("%runscript unterminated quote", _sub(r"^%runscript$", "%runscript\n    echo \"oops"),
     "%runscript: bash -n"),
    ("%post bash-only syntax for /bin/sh", _sub(r"^%test$", "    x=(a b)\n%test"),
     "%post: sh -n"),
    ("no %test section", _sub(r"^%test\n(?:(?!%).*\n)*", ""), "no %test section"),
    ("%post twice", _sub(r"^%test$", "%post\n    true\n%test"), "again"),
    ("%files source missing", _sub(r"^%files$", "%files\n    no-such-dir /opt/x"), "not found"),
    ("label without value", _sub(r"^%labels$", "%labels\n    lonely"), "has no value"),
    ("no CMAKE_PREFIX_PATH", _sub(r"CMAKE_PREFIX_PATH=/opt/libtorch", "X=1"),
     "CMAKE_PREFIX_PATH"),
    ("no -DLLT_GIT_SHA", _sub(r" -DLLT_GIT_SHA=\S+", ""), "-DLLT_GIT_SHA"),
    ("no NCCL version check", lambda text: text.replace("NCCL_VERSION_CODE", "X"),
     "NCCL_VERSION_CODE"),
    ("LibTorch other than CI's", _sub(r"LIBTORCH_VERSION=2\.11\.0", "LIBTORCH_VERSION=2.7.1"),
     "the torch CI tests"),
    ("URL of another LibTorch", _sub(r"shared-with-deps-2\.11\.0", "shared-with-deps-2.7.1"),
     "LIBTORCH_URL"),
    ("stale label", _sub(r"llt\.libtorch 2\.11\.0", "llt.libtorch 2.7.1"), "label llt.libtorch"),
]


def self_test(path):
    """Every broken copy of `path` must be caught with the expected problem; `path` must pass."""
    with open(path, encoding="utf-8") as f:
        original = f.read()
    context = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    failures = 0
    problems = check(path, context)
    if problems:
        report(path, problems)
        failures += 1
    with tempfile.TemporaryDirectory() as tmp:
        broken = os.path.join(tmp, "broken.def")
        for what, edit, expected in BREAKAGES:
            text = edit(original)
            with open(broken, "w", encoding="utf-8") as f:
                f.write(text)
            found = check(broken, context) if text != original else []
            caught = any(expected in problem for _, problem in found)
            print(f"{'PASS' if caught else 'FAIL'} {what}: "
                  f"{'; '.join(p for _, p in found) if found else 'nothing reported'}"
                  f"{'' if text != original else ' (the edit did not apply)'}")
            failures += not caught
    print(f"{len(BREAKAGES) + 1 - failures} passed, {failures} failed")
    return 1 if failures else 0


def main(argv):
    if len(argv) == 2 and argv[0] == "--self-test":
        return self_test(argv[1])
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    problems = check(argv[0])
    report(argv[0], problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
