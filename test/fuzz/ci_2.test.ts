// CI fuzzing, share 2 of 2 (see ci.ts).
import { ciFuzz } from './ci.ts';

ciFuzz(2_000_000);
