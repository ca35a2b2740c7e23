# Writes llt_version.cpp (the commit a build came from, recorded in run folders) at every build,
# not only at configure: lib/CMakeLists.txt runs this script from an always-out-of-date target.
# configure_file rewrites the output only when its text changes, so a new commit recompiles that
# one file and an unchanged tree recompiles nothing.
# Variables: SOURCE_DIR (the tree), IN (version.cpp.in), OUT, PROJECT_VERSION, GIVEN_SHA (a sha
# given with -DLLT_GIT_SHA: singularity/llt.def passes one, its copy of the tree being partial).
if(NOT GIVEN_SHA STREQUAL "")
  set(LLT_GIT_SHA "${GIVEN_SHA}")
else()
  execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                  OUTPUT_VARIABLE LLT_GIT_SHA OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(LLT_GIT_SHA STREQUAL "")
    set(LLT_GIT_SHA "unknown")
  else()
    # Tracked files changed since that commit.
    execute_process(COMMAND git status --porcelain --untracked-files=no
                    WORKING_DIRECTORY ${SOURCE_DIR} OUTPUT_VARIABLE changes ERROR_QUIET)
    if(changes)
      string(APPEND LLT_GIT_SHA "-dirty")
    endif()
  endif()
endif()
configure_file(${IN} ${OUT} @ONLY)
