// The version and the git commit this build came from (recorded in run folders).
#pragma once

namespace llt {

const char* llt_version();
const char* git_sha();  // short sha at configure time, or "unknown"

}  // namespace llt
